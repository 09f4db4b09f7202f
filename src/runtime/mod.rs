//! The runtime snapshot: everything a request needs, built from one config.
//!
//! A request loads the current `Arc<Runtime>` once, in `request_filter`, and
//! keeps it in its context, so it sees one configuration from start to end.
//! A reload builds a new `Runtime` off the request path and swaps it in.

pub mod control;
pub mod overrides;
pub mod routing;
pub mod upstream;
pub mod window;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError, ConfigErrors, KeyPath};
use crate::limits::clients::ClientPolicies;
use crate::limits::clock::Clock;
use crate::limits::connections::{HostInfo, Hosts};
use routing::Router;
use upstream::Upstream;
pub use window::AdaptiveWindow;

/// One immutable configuration, compiled for the request path.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Peers whose `X-Forwarded-*` headers are kept.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Client policies and their counters.
    pub clients: ClientPolicies,
    /// Connection counters of every host (backends and forward-proxy
    /// destinations), shared by every runtime.
    pub hosts: Arc<Hosts>,
    /// The gateway-wide adaptive window.
    pub adaptive: Option<AdaptiveWindow>,
}

/// The swappable handle every service shares.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

impl Runtime {
    /// Compiles a validated config. Fails only on what validation cannot see
    /// without reading further files (a CA file that does not parse).
    /// Limiter state of `previous` carries over where policies are unchanged.
    pub fn build(
        config: Config,
        clock: Arc<dyn Clock>,
        hosts: Arc<Hosts>,
        previous: Option<&Runtime>,
    ) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut upstreams = Vec::new();
        for (i, u) in config.upstreams.iter().enumerate() {
            let adaptive = u.backpressure.as_ref().map(|b| {
                let prev = previous
                    .and_then(|p| p.upstreams.iter().find(|x| x.name == u.name))
                    .and_then(|x| x.adaptive.as_ref());
                AdaptiveWindow::build(&u.name, b, &clock, prev)
            });
            match Upstream::build(u, &hosts.upstream, adaptive) {
                Ok(u) => upstreams.push(Arc::new(u)),
                Err(message) => errors.push(ConfigError {
                    path: KeyPath::root().key("upstreams").index(i),
                    line: None,
                    message,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors { file: None, errors });
        }
        let adaptive = config.backpressure.as_ref().map(|b| {
            let prev = previous.and_then(|p| p.adaptive.as_ref());
            AdaptiveWindow::build("global", b, &clock, prev)
        });
        let clients =
            ClientPolicies::build(&config.clients.policy, clock, previous.map(|p| &p.clients))
                .map_err(|message| ConfigErrors {
                    file: None,
                    errors: vec![ConfigError {
                        path: KeyPath::root()
                            .key("clients")
                            .key("max_client_table_memory"),
                        line: None,
                        message,
                    }],
                })?;
        Ok(Runtime {
            adaptive,
            hosts,
            clients,
            router: Router::new(&config.routes),
            trusted_proxies: config.server.trusted_proxies.clone(),
            upstreams,
            config: Arc::new(config),
        })
    }

    /// Every adaptive window: the gateway-wide one, then the upstreams'.
    pub fn adaptive_windows(&self) -> Vec<AdaptiveWindow> {
        self.adaptive
            .iter()
            .chain(self.upstreams.iter().filter_map(|u| u.adaptive.as_ref()))
            .cloned()
            .collect()
    }

    /// Every host with a counter or a cap: each backend (once, as the first
    /// upstream listing it caps it), then the forward proxy's destinations
    /// (those in use and those `host_limits` names).
    pub fn host_infos(&self) -> Vec<HostInfo> {
        let mut out: Vec<HostInfo> = Vec::new();
        for u in &self.upstreams {
            for h in u.host_infos() {
                if !out.iter().any(|o| o.host == h.host) {
                    out.push(h);
                }
            }
        }
        if let Some(fp) = &self.config.forward_proxy {
            let mut names: std::collections::BTreeSet<String> =
                fp.host_limits.keys().cloned().collect();
            names.extend(self.hosts.forward.counters().iter().map(|c| c.host.clone()));
            for host in names {
                let configured = fp.cap_of(&host);
                let (active, (max_connections, source)) = match self.hosts.forward.get(&host) {
                    Some(c) => (c.active(), c.cap(configured)),
                    None => (0, (configured, crate::limits::connections::CapSource::File)),
                };
                out.push(HostInfo {
                    host,
                    proxy: crate::limits::connections::Proxy::Forward,
                    active,
                    max_connections,
                    source,
                });
            }
        }
        out
    }

    /// Whether `ip` is a configured trusted proxy (`::ffff:a.b.c.d` as
    /// `a.b.c.d`).
    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}
