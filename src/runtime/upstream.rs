//! Upstream pools: backend selection (round robin over healthy backends),
//! active health checks, and the peer each request connects to.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, WrappedX509};

use super::AdaptiveWindow;
use crate::config::UpstreamConfig;
use crate::limits::connections::{HostCounter, HostInfo, HostRegistry, HostSlot};

/// One named pool of backends, as the request path sees it.
pub struct Upstream {
    pub name: String,
    lb: LoadBalancer<RoundRobin>,
    tls: Option<PeerTls>,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    idle_timeout: Duration,
    /// How often the background health check probes each backend.
    pub health_check_interval: Duration,
    /// Further backends tried when connecting to one fails.
    pub retries: usize,
    /// Separates this upstream's pooled connections from any other's, so
    /// two upstreams with different TLS trust never share a connection.
    pool_group: u64,
    /// The connection counter of each backend host (shared with every
    /// upstream listing the same backend, and across reloads), once each.
    counters: Vec<(SocketAddr, Arc<HostCounter>)>,
    /// Whether each backend (as `counters`) passed its last health check,
    /// copied from Pingora's checks after each round: the request path
    /// reads a flag instead of hashing the backend into Pingora's registry.
    healthy: Vec<AtomicBool>,
    /// The round robin's position.
    next: AtomicUsize,
    /// This upstream's cap per backend host (0 = none).
    max_connections: u64,
    /// This upstream's own adaptive window.
    pub adaptive: Option<AdaptiveWindow>,
    /// Headers set on every request to it (provider keys: values resolved
    /// from the environment, marked sensitive, never logged), and removed.
    pub set_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove_headers: Vec<http::HeaderName>,
}

/// Why no backend could be given to a request.
#[derive(Debug, PartialEq, Eq)]
pub enum NoBackend {
    /// Every backend not yet tried is at its connection cap.
    AtCap,
    /// Every backend has been tried.
    Exhausted,
}

struct PeerTls {
    sni: String,
    verify_cert: bool,
    ca: Option<Arc<[WrappedX509]>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish()
    }
}

impl Upstream {
    /// Builds the pool. Reads the CA file, so it runs off the request path
    /// (at start and on reload).
    pub fn build(
        c: &UpstreamConfig,
        hosts: &HostRegistry,
        adaptive: Option<AdaptiveWindow>,
    ) -> Result<Self, String> {
        let backends = c.backends.iter().map(|a| a.to_string());
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(backends)
            .map_err(|e| format!("upstream {}: backends: {e}", c.name))?;
        let mut hc = TcpHealthCheck::new();
        hc.peer_template.options.connection_timeout =
            Some(c.connect_timeout.min(c.health_check_interval));
        // One failed probe takes a backend out, one success brings it back:
        // traffic moves within one interval either way.
        hc.consecutive_failure = 1;
        hc.consecutive_success = 1;
        lb.set_health_check(hc);
        let tls = match &c.tls {
            None => None,
            Some(t) => Some(PeerTls {
                sni: t.sni.clone(),
                verify_cert: t.verify_cert,
                ca: match &t.ca_file {
                    None => None,
                    Some(path) => Some(Arc::from(load_ca(path).map_err(|e| {
                        format!("upstream {}: ca_file {}: {e}", c.name, path.display())
                    })?)),
                },
            }),
        };
        let mut counters: Vec<(SocketAddr, Arc<HostCounter>)> = Vec::new();
        for a in &c.backends {
            // A backend listed twice is one backend (as Pingora's set has it).
            if !counters.iter().any(|(x, _)| x == a) {
                counters.push((*a, hosts.counter(&a.to_string())));
            }
        }
        // Healthy until a check says otherwise (as Pingora starts them).
        let healthy = counters.iter().map(|_| AtomicBool::new(true)).collect();
        let mut set_headers = Vec::new();
        for (name, template) in &c.request_headers.set {
            let v = template
                .resolve()
                .map_err(|e| format!("upstream {}: request_headers.set.{name}: {e}", c.name))?;
            set_headers.push((name.clone(), v));
        }
        Ok(Upstream {
            set_headers,
            remove_headers: c.request_headers.remove.clone(),
            adaptive,
            counters,
            healthy,
            next: AtomicUsize::new(0),
            max_connections: c.max_connections,
            name: c.name.clone(),
            lb,
            tls,
            connect_timeout: c.connect_timeout,
            read_timeout: c.read_timeout,
            write_timeout: c.write_timeout,
            idle_timeout: c.idle_timeout,
            health_check_interval: c.health_check_interval,
            retries: c.retries,
            pool_group: {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                c.name.hash(&mut h);
                h.finish()
            },
        })
    }

    /// The next backend (round robin, healthy first, skipping `exclude`)
    /// that has room under its connection cap, with its slot taken.
    pub fn acquire(&self, exclude: &[SocketAddr]) -> Result<(SocketAddr, HostSlot), NoBackend> {
        let n = self.counters.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut any_fresh = false;
        for healthy_only in [true, false] {
            for k in 0..n {
                let i = start.wrapping_add(k) % n;
                let (addr, counter) = &self.counters[i];
                if exclude.contains(addr)
                    || (healthy_only && !self.healthy[i].load(Ordering::Relaxed))
                {
                    continue;
                }
                any_fresh = true;
                if let Some(slot) = counter.try_acquire(self.max_connections) {
                    return Ok((*addr, slot));
                }
            }
        }
        Err(if any_fresh {
            NoBackend::AtCap
        } else {
            NoBackend::Exhausted
        })
    }

    /// Each backend's counter, as the admin API and metrics show it.
    pub fn host_infos(&self) -> impl Iterator<Item = HostInfo> + '_ {
        self.counters.iter().map(|(_, c)| {
            let (max_connections, source) = c.cap(self.max_connections);
            HostInfo {
                host: c.host.clone(),
                proxy: crate::limits::connections::Proxy::Reverse,
                active: c.active(),
                max_connections,
                source,
            }
        })
    }

    pub fn backend_count(&self) -> usize {
        self.counters.len()
    }

    /// The peer a request to `addr` connects through; Pingora pools the
    /// connections by peer. Boxed where it is made, as Pingora takes it (a
    /// peer returned by value was copied once more, into its box).
    pub fn peer(&self, addr: SocketAddr) -> Box<HttpPeer> {
        let (tls, sni) = match &self.tls {
            Some(t) => (true, t.sni.clone()),
            None => (false, String::new()),
        };
        let mut peer = Box::new(HttpPeer::new(addr, tls, sni));
        peer.group_key = self.pool_group;
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.write_timeout);
        o.idle_timeout = Some(self.idle_timeout);
        if let Some(t) = &self.tls {
            o.verify_cert = t.verify_cert;
            o.verify_hostname = t.verify_cert;
            if let Some(ca) = &t.ca {
                o.ca = Some(ca.clone());
            }
        }
        peer
    }

    /// Probes every backend once (in parallel); called by the health-check
    /// service every `health_check_interval`.
    pub async fn run_health_check(&self) {
        let backends = self.lb.backends();
        backends.run_health_check(true).await;
        for b in backends.get_backend().iter() {
            let Some(addr) = b.addr.as_inet() else {
                continue;
            };
            if let Some(i) = self.counters.iter().position(|(a, _)| a == addr) {
                self.healthy[i].store(backends.ready(b), Ordering::Relaxed);
            }
        }
    }
}

/// Reads a PEM file of CA certificates, checking each one parses. Runs in
/// `Runtime::build`: at start and in the control plane's blocking calls.
#[allow(clippy::disallowed_methods)]
fn load_ca(path: &std::path::Path) -> Result<Vec<WrappedX509>, String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut store = pingora::tls::RootCertStore::empty();
    let mut out = Vec::new();
    for cert in rustls_pemfile::certs(&mut data.as_slice()) {
        let cert = cert.map_err(|e| format!("not a PEM certificate file: {e}"))?;
        store
            .add(cert.clone())
            .map_err(|e| format!("invalid certificate: {e}"))?;
        out.push(WrappedX509::new(cert.as_ref().to_vec(), parse_x509));
    }
    if out.is_empty() {
        return Err("no certificate found".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(backends: &str, cap: u64) -> Upstream {
        let c = crate::config::parse(
            &format!(
                "[[upstreams]]\nname = \"a\"\nbackends = [{backends}]\nmax_connections = {cap}\n[[routes]]\nupstream = \"a\"\n"
            ),
            std::path::Path::new("."),
        )
        .unwrap();
        Upstream::build(&c.upstreams[0], &HostRegistry::new(), None).unwrap()
    }

    const A: &str = "127.0.0.1:1";
    const B: &str = "127.0.0.1:2";

    #[test]
    fn round_robin_healthy_first_then_any_with_room() {
        let u = upstream(&format!("\"{A}\", \"{B}\", \"{A}\""), 2);
        // A backend listed twice is one backend.
        assert_eq!(u.backend_count(), 2);
        let a: SocketAddr = A.parse().unwrap();
        let b: SocketAddr = B.parse().unwrap();
        let (x, sx) = u.acquire(&[]).unwrap();
        let (y, sy) = u.acquire(&[]).unwrap();
        assert_ne!(x, y, "round robin alternates");
        drop((sx, sy));
        // `a` fails its check: `b` is chosen while it has room, then `a`.
        u.healthy[0].store(false, Ordering::Relaxed);
        let held: Vec<_> = (0..4).map(|_| u.acquire(&[]).unwrap()).collect();
        let picked: Vec<SocketAddr> = held.iter().map(|(addr, _)| *addr).collect();
        assert_eq!(picked, vec![b, b, a, a]);
        assert_eq!(u.acquire(&[]).unwrap_err(), NoBackend::AtCap);
        drop(held);
        // Every backend tried already: exhausted, not at cap.
        assert_eq!(u.acquire(&[a, b]).unwrap_err(), NoBackend::Exhausted);
        assert_eq!(u.acquire(&[b]).unwrap().0, a);
    }
}
