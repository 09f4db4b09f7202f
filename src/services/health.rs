//! Background service: active health checks of every upstream's backends
//! (and, now and then, forgetting forward-proxy destinations no one uses).
//!
//! Runs off the request path and always checks the upstreams of the current
//! runtime snapshot, so a reload that adds or changes backends is picked up
//! at the next tick.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::runtime::SharedRuntime;

pub struct HealthChecks {
    runtime: SharedRuntime,
}

impl HealthChecks {
    pub fn new(runtime: SharedRuntime) -> Self {
        HealthChecks { runtime }
    }
}

const TICK: Duration = Duration::from_millis(100);
const SWEEP: Duration = Duration::from_secs(5);

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last: HashMap<String, Instant> = HashMap::new();
        let mut last_sweep = Instant::now();
        loop {
            let rt = self.runtime.load_full();
            let now = Instant::now();
            if now.duration_since(last_sweep) >= SWEEP {
                // Forget forward-proxy destinations nobody uses any more.
                // Destinations nobody uses any more.
                let keep = |h: &str| {
                    rt.config
                        .forward_proxy
                        .as_ref()
                        .is_some_and(|f| f.host_limits.contains_key(h))
                };
                rt.hosts.forward.sweep(&keep);
                // Backends a reload removed.
                let backend = |h: &str| {
                    rt.config
                        .upstreams
                        .iter()
                        .any(|u| u.backends.iter().any(|b| b.to_string() == h))
                };
                rt.hosts.upstream.sweep(&backend);
                last_sweep = now;
            }
            let due: Vec<_> = rt
                .upstreams
                .iter()
                .filter(|u| {
                    last.get(&u.name)
                        .is_none_or(|t| now.duration_since(*t) >= u.health_check_interval)
                })
                .cloned()
                .collect();
            for u in &due {
                last.insert(u.name.clone(), now);
            }
            // Probe all due upstreams concurrently; each probes its backends
            // in parallel.
            let checks = due.iter().map(|u| u.run_health_check());
            tokio::select! {
                _ = futures::future::join_all(checks) => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
