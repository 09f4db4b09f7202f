//! The forward proxy, on its own listener: `CONNECT host:port` tunnels and
//! absolute-form requests (`GET http://host:port/path`), without TLS
//! interception, under the destination policy and a connection cap per
//! destination host.
//!
//! Pingora's HTTP proxy does not tunnel CONNECT (it answers 405, and its
//! opt-in forwards CONNECT as a plain request), so [`ForwardApp`] reads each
//! request header itself: a CONNECT becomes a tunnel here, anything else
//! goes to Pingora's HTTP proxy with [`ForwardGateway`] as its logic.
//!
//! ```text
//! CONNECT   policy (name) → host slot → resolve → policy (addresses) → connect
//!           → 200, then bytes both ways; the slot is held for the tunnel's life
//! absolute  request_filter: the same checks; upstream_peer: the destination;
//!           upstream_request_filter: origin-form target, forwarding headers;
//!           the slot is freed when the response ends
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

mod absolute;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use super::guard::http1::Head;
use super::guard::{refuse, serve_http1, Listeners};
use crate::config::ForwardProxyConfig;
use crate::limits::connections::HostSlot;
use crate::limits::destinations::{host_key, ip_literal};
use crate::limits::{Refusal, RejectReason};
use crate::runtime::{Runtime, SharedRuntime};
pub use absolute::ForwardGateway;

/// The metric `route` label of forward-proxy traffic.
pub const FORWARD_ROUTE: &str = "forward_proxy";

/// The request metrics of forward-proxy traffic.
pub fn forward_metrics() -> &'static Arc<crate::metrics::RouteMetrics> {
    static FORWARD: std::sync::OnceLock<Arc<crate::metrics::RouteMetrics>> =
        std::sync::OnceLock::new();
    FORWARD.get_or_init(|| crate::metrics::RouteMetrics::new(Arc::from(FORWARD_ROUTE)))
}

/// Connection handler of the forward-proxy listener.
pub struct ForwardApp {
    proxy: Arc<HttpProxy<ForwardGateway>>,
    runtime: SharedRuntime,
    listeners: Listeners,
}

impl ForwardApp {
    pub fn new(
        proxy: HttpProxy<ForwardGateway>,
        runtime: SharedRuntime,
        listeners: Listeners,
    ) -> Self {
        ForwardApp {
            proxy: Arc::new(proxy),
            runtime,
            listeners,
        }
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6); the port is required.
pub fn split_authority(a: &str) -> Option<(String, u16)> {
    let (host, port) = a.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']')?,
        // An unbracketed IPv6 literal is ambiguous with its port.
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port))
}

/// A destination that passed every check, and the slots it holds.
pub struct Admitted {
    /// The address to connect to (checked, canonical).
    pub addr: SocketAddr,
    /// Its slot under the address's cap, and under the name's when
    /// `host_limits` caps the name.
    pub slots: Vec<HostSlot>,
}

/// The checks every destination passes, in this order, so that nothing is
/// allocated or counted for a destination the policy refuses: the port and
/// the name (or literal address); resolution; every address it resolves to
/// (canonical: `::ffff:127.0.0.1` is `127.0.0.1`; unspecified refused; the
/// gateway's own listeners refused); then a slot under the cap of the
/// address connected to (so every alias of an address shares one count:
/// `localhost`, `127.1`, `2130706433`, `[::ffff:127.0.0.1]`), and under the
/// name's cap too when `host_limits` names it.
async fn admit(
    fp: &ForwardProxyConfig,
    rt: &Runtime,
    host: &str,
    port: u16,
) -> Result<Admitted, Refusal> {
    let denied = |e| Refusal::new(RejectReason::DestinationDenied, e);
    fp.policy.check_name(host, port).map_err(denied)?;
    let addrs: Vec<SocketAddr> = match ip_literal(host) {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => {
            let lookup = tokio::net::lookup_host((host, port));
            match tokio::time::timeout(fp.connect_timeout, lookup).await {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(e)) => {
                    return Err(Refusal::new(
                        RejectReason::UpstreamError,
                        format!("cannot resolve {host}: {e}"),
                    ))
                }
                Err(_) => {
                    return Err(Refusal::new(
                        RejectReason::UpstreamTimeout,
                        format!("resolving {host} timed out"),
                    ))
                }
            }
        }
    };
    let Some(first) = addrs.first() else {
        return Err(Refusal::new(
            RejectReason::UpstreamError,
            format!("{host} has no address"),
        ));
    };
    for a in &addrs {
        fp.policy.check_addr(host, a.ip()).map_err(denied)?;
        if is_the_gateway(rt, a) {
            return Err(denied(format!(
                "{host}:{port} is this gateway's own listener"
            )));
        }
    }
    let addr = SocketAddr::new(first.ip().to_canonical(), port);
    let mut keys = vec![host_key(&addr.ip().to_string(), port)];
    let name_key = host_key(host, port);
    if ip_literal(host).is_none() && fp.host_limits.contains_key(&name_key) {
        keys.push(name_key);
    }
    let mut slots = Vec::with_capacity(keys.len());
    for key in keys {
        let counter = rt.hosts.forward.counter(&key);
        match counter.try_acquire(fp.cap_of(&key)) {
            Some(s) => slots.push(s),
            None => {
                return Err(Refusal::new(
                    RejectReason::ConnectionLimit,
                    format!("destination {key} is at its connection cap"),
                )
                .retry_after(1))
            }
        }
    }
    Ok(Admitted { addr, slots })
}

/// Whether `dest` is one of the gateway's own listeners (proxy, TLS,
/// admin, forward proxy): never reachable through the forward proxy. A
/// listener on an unspecified address listens on every local address.
fn is_the_gateway(rt: &Runtime, dest: &SocketAddr) -> bool {
    let ip = dest.ip().to_canonical();
    let c = &rt.config;
    let listeners = c
        .server
        .listen
        .iter()
        .chain(c.server.tls.iter().map(|t| &t.listen))
        .chain(std::iter::once(&c.server.admin_listen))
        .chain(c.server.grpc_listen.iter())
        .chain(c.forward_proxy.iter().map(|f| &f.listen));
    for l in listeners {
        if l.port() != dest.port() {
            continue;
        }
        let lip = l.ip().to_canonical();
        if lip == ip {
            return true;
        }
        if lip.is_unspecified() && (ip.is_loopback() || is_local(ip)) {
            return true;
        }
    }
    false
}

/// Whether `ip` is an address of this host: binding a socket to it works
/// only then (no I/O; only asked for destinations on a listener's port).
fn is_local(ip: std::net::IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

impl ForwardApp {
    /// Runs one CONNECT tunnel to its end.
    async fn tunnel(&self, mut client: Stream, bytes: BytesMut, head: Head) {
        let started = Instant::now();
        let rt = self.runtime.load_full();
        let Some(fp) = rt.config.forward_proxy.as_ref() else {
            refuse(
                client,
                FORWARD_ROUTE,
                Refusal::new(RejectReason::NoRoute, "the forward proxy is off"),
                None,
            )
            .await;
            return;
        };
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut parsed);
        let (target, body_start) = match req.parse(&bytes[..head.len]) {
            Ok(httparse::Status::Complete(n)) => (req.path.unwrap_or("").to_string(), n),
            _ => {
                refuse(
                    client,
                    FORWARD_ROUTE,
                    Refusal::new(RejectReason::BadRequest, "malformed CONNECT request"),
                    None,
                )
                .await;
                return;
            }
        };
        let Some((host, port)) = split_authority(&target) else {
            let msg = format!("CONNECT needs host:port, not {target:?}");
            refuse(
                client,
                FORWARD_ROUTE,
                Refusal::new(RejectReason::BadRequest, msg),
                None,
            )
            .await;
            return;
        };
        let Admitted { addr, slots } = match admit(fp, &rt, &host, port).await {
            Ok(x) => x,
            Err(r) => {
                refuse(client, FORWARD_ROUTE, r, None).await;
                return;
            }
        };
        let connect = tokio::net::TcpStream::connect(addr);
        let mut upstream = match tokio::time::timeout(fp.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let msg = format!("cannot connect to {host}:{port}: {e}");
                refuse(
                    client,
                    FORWARD_ROUTE,
                    Refusal::new(RejectReason::UpstreamError, msg),
                    None,
                )
                .await;
                return;
            }
            Err(_) => {
                let msg = format!("connecting to {host}:{port} timed out");
                refuse(
                    client,
                    FORWARD_ROUTE,
                    Refusal::new(RejectReason::UpstreamTimeout, msg),
                    None,
                )
                .await;
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let established = b"HTTP/1.1 200 Connection Established\r\n\r\n";
        if client.write_all(established).await.is_err() || client.flush().await.is_err() {
            return;
        }
        // Bytes the client sent right after its CONNECT header.
        if upstream.write_all(&bytes[body_start..]).await.is_err() {
            return;
        }
        let m = crate::metrics::metrics();
        m.requests_total
            .with_label_values(&[FORWARD_ROUTE, crate::metrics::OUTCOME_ALLOWED])
            .inc();
        // A tunnel lives until either side closes. On shutdown or upgrade it
        // is drained like a request: it may finish within the grace period,
        // after which the process ends and takes it along.
        let (up, down) = tokio::io::copy_bidirectional(&mut client, &mut upstream)
            .await
            .unwrap_or((0, 0));
        drop(slots);
        m.request_duration_seconds
            .with_label_values(&[FORWARD_ROUTE])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            target: "access",
            route = FORWARD_ROUTE,
            method = "CONNECT",
            destination = %target,
            bytes_up = up,
            bytes_down = down,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            outcome = crate::metrics::OUTCOME_ALLOWED,
        );
    }
}

#[async_trait]
impl ServerApp for ForwardApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (stream, _permit) = self.listeners.accept(stream, &self.runtime).await?;
        // A CONNECT becomes a tunnel; anything else goes to Pingora.
        let diverted = serve_http1(
            &self.proxy,
            &self.runtime,
            stream,
            shutdown,
            FORWARD_ROUTE,
            |h| h.connect,
        )
        .await;
        if let Some((io, bytes, head)) = diverted {
            self.tunnel(io, bytes, head).await;
        }
        None
    }

    async fn cleanup(&self) {
        use pingora::apps::HttpServerApp;
        self.proxy.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(
            split_authority("Example.com:443"),
            Some(("example.com".into(), 443))
        );
        assert_eq!(split_authority("[::1]:8080"), Some(("::1".into(), 8080)));
        assert_eq!(split_authority("example.com"), None);
        assert_eq!(split_authority(":80"), None);
        assert_eq!(split_authority("a:0"), None);
    }
}
