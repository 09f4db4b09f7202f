//! Background service: active health checks of every upstream's backends.
//!
//! Runs off the request path and always checks the upstreams of the current
//! runtime snapshot, so a reload that adds or changes backends is picked up
//! at the next tick.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::SharedRuntime;

pub struct HealthChecks {
    runtime: SharedRuntime,
}

impl HealthChecks {
    pub fn new(runtime: SharedRuntime) -> Self {
        HealthChecks { runtime }
    }
}

const TICK: Duration = Duration::from_millis(100);

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last: HashMap<String, Instant> = HashMap::new();
        loop {
            let rt = self.runtime.load_full();
            let now = Instant::now();
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
