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

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::ServerApp;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::Stream;
use pingora::proxy::{FailToProxy, HttpProxy, ProxyHttp, Session};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use super::listener::{refuse, serve_http1};
use super::{headers, respond, RequestCtx, Runtime, SharedRuntime};
use crate::config::ForwardProxyConfig;
use crate::limits::connections::HostSlot;
use crate::limits::destinations::host_key;
use crate::limits::RejectReason;

/// The metric `route` label of forward-proxy traffic.
pub const FORWARD_ROUTE: &str = "forward_proxy";

/// Connection handler of the forward-proxy listener.
pub struct ForwardApp {
    proxy: Arc<HttpProxy<ForwardGateway>>,
    runtime: SharedRuntime,
}

impl ForwardApp {
    pub fn new(proxy: HttpProxy<ForwardGateway>, runtime: SharedRuntime) -> Self {
        ForwardApp {
            proxy: Arc::new(proxy),
            runtime,
        }
    }
}

/// A refusal on the way to a destination.
type Refusal = (RejectReason, String);

/// Splits `host:port` (`[v6]:port` for IPv6); the port is required.
fn split_authority(a: &str) -> Option<(String, u16)> {
    let (host, port) = a.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port))
}

/// The checks every destination passes: policy on the name, a slot under
/// the host's cap, resolution, policy on every address.
async fn admit(
    fp: &ForwardProxyConfig,
    rt: &Runtime,
    host: &str,
    port: u16,
) -> Result<(Vec<SocketAddr>, HostSlot), Refusal> {
    fp.policy
        .check_name(host, port)
        .map_err(|e| (RejectReason::DestinationDenied, e))?;
    let key = host_key(host, port);
    let cap = fp
        .host_limits
        .get(&key)
        .copied()
        .unwrap_or(fp.default_max_connections);
    let slot = rt.hosts.counter(&key, cap).try_acquire().ok_or_else(|| {
        (
            RejectReason::ConnectionLimit,
            format!("destination {key} is at its connection cap"),
        )
    })?;
    let lookup = tokio::net::lookup_host((host, port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(fp.connect_timeout, lookup).await {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(e)) => {
            return Err((
                RejectReason::UpstreamError,
                format!("cannot resolve {host}: {e}"),
            ))
        }
        Err(_) => {
            return Err((
                RejectReason::UpstreamTimeout,
                format!("resolving {host} timed out"),
            ))
        }
    };
    if addrs.is_empty() {
        return Err((
            RejectReason::UpstreamError,
            format!("{host} has no address"),
        ));
    }
    for a in &addrs {
        fp.policy
            .check_addr(host, a.ip())
            .map_err(|e| (RejectReason::DestinationDenied, e))?;
    }
    Ok((addrs, slot))
}

impl ForwardApp {
    /// Runs one CONNECT tunnel to its end.
    async fn tunnel(&self, mut client: Stream, head: BytesMut) {
        let started = Instant::now();
        let rt = self.runtime.load_full();
        let Some(fp) = rt.config.forward_proxy.as_ref() else {
            refuse(
                client,
                FORWARD_ROUTE,
                RejectReason::NoRoute,
                "the forward proxy is off",
            )
            .await;
            return;
        };
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut parsed);
        let (target, body_start) = match req.parse(&head) {
            Ok(httparse::Status::Complete(n)) => (req.path.unwrap_or("").to_string(), n),
            _ => {
                refuse(
                    client,
                    FORWARD_ROUTE,
                    RejectReason::BadRequest,
                    "malformed CONNECT request",
                )
                .await;
                return;
            }
        };
        let Some((host, port)) = split_authority(&target) else {
            let msg = format!("CONNECT needs host:port, not {target:?}");
            refuse(client, FORWARD_ROUTE, RejectReason::BadRequest, &msg).await;
            return;
        };
        let (addrs, slot) = match admit(fp, &rt, &host, port).await {
            Ok(x) => x,
            Err((reason, msg)) => {
                refuse(client, FORWARD_ROUTE, reason, &msg).await;
                return;
            }
        };
        let connect = tokio::net::TcpStream::connect(&addrs[..]);
        let mut upstream = match tokio::time::timeout(fp.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let msg = format!("cannot connect to {host}:{port}: {e}");
                refuse(client, FORWARD_ROUTE, RejectReason::UpstreamError, &msg).await;
                return;
            }
            Err(_) => {
                let msg = format!("connecting to {host}:{port} timed out");
                refuse(client, FORWARD_ROUTE, RejectReason::UpstreamTimeout, &msg).await;
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let established = b"HTTP/1.1 200 Connection Established\r\n\r\n";
        if client.write_all(established).await.is_err() || client.flush().await.is_err() {
            return;
        }
        // Bytes the client sent right after its CONNECT header.
        if upstream.write_all(&head[body_start..]).await.is_err() {
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
        drop(slot);
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

/// The request target as sent (`http://host:port/path` in absolute form).
fn absolute_target(req: &RequestHeader) -> http::Uri {
    http::Uri::try_from(req.raw_path()).unwrap_or_else(|_| req.uri.clone())
}

fn is_connect(head: &[u8]) -> bool {
    let start = head
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(0);
    head[start..].starts_with(b"CONNECT ")
}

#[async_trait]
impl ServerApp for ForwardApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A CONNECT becomes a tunnel; anything else goes to Pingora.
        if let Some((io, head)) =
            serve_http1(&self.proxy, &self.runtime, stream, shutdown, is_connect).await
        {
            self.tunnel(io, head).await;
        }
        None
    }

    async fn cleanup(&self) {
        use pingora::apps::HttpServerApp;
        self.proxy.http_cleanup().await;
    }
}

/// The forward proxy's logic for absolute-form requests.
pub struct ForwardGateway {
    runtime: SharedRuntime,
}

impl ForwardGateway {
    pub fn new(runtime: SharedRuntime) -> Self {
        ForwardGateway { runtime }
    }
}

#[async_trait]
impl ProxyHttp for ForwardGateway {
    type CTX = RequestCtx;

    /// Runs when a request header has been read.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    /// Runs once at start: no downstream modules. Pingora's default adds a
    /// (disabled) response-compression module that every request would
    /// still pass through; the gateway never compresses.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// Runs before anything goes to the destination: the target must be
    /// absolute-form `http://`, allowed by the policy, and under its cap.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let rt = self.runtime.load_full();
        ctx.runtime = Some(rt.clone());
        ctx.route = Some(Arc::from(FORWARD_ROUTE));
        ctx.request_id = headers::request_id(session.req_header());
        let Some(fp) = rt.config.forward_proxy.as_ref() else {
            let msg = "the forward proxy is off";
            return respond::reject(session, ctx, RejectReason::NoRoute, msg, None, &[]).await;
        };
        // Pingora keeps the absolute-form target in the raw path; its `uri`
        // holds the path only.
        let uri = absolute_target(session.req_header());
        let target = match (uri.scheme_str(), uri.host()) {
            (Some("http"), Some(h)) => Ok((h.to_ascii_lowercase(), uri.port_u16().unwrap_or(80))),
            (Some(s), Some(_)) => Err(format!(
                "only http:// targets are proxied in absolute form; use CONNECT for {s}"
            )),
            _ => Err(format!(
                "the forward proxy takes absolute-form requests (GET http://host/path) and CONNECT, not {uri}"
            )),
        };
        let (host, port) = match target {
            Ok(t) => t,
            Err(msg) => {
                return respond::reject(session, ctx, RejectReason::BadRequest, &msg, None, &[])
                    .await
            }
        };
        match admit(fp, &rt, &host, port).await {
            Ok((addrs, slot)) => {
                ctx.backend = addrs.first().copied();
                ctx.slot = Some(slot);
                Ok(false)
            }
            Err((reason, msg)) => {
                let retry = reason.needs_retry_after().then_some(1);
                respond::reject(session, ctx, reason, &msg, retry, &[]).await
            }
        }
    }

    /// Runs before connecting: the destination resolved in `request_filter`.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(addr) = ctx.backend else {
            return Error::e_explain(InternalError, "no destination resolved");
        };
        let timeout = ctx
            .runtime
            .as_ref()
            .and_then(|rt| rt.config.forward_proxy.as_ref())
            .map(|f| f.connect_timeout);
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = timeout;
        Ok(Box::new(peer))
    }

    /// Runs before the request goes to the destination: origin-form target,
    /// `Host` from the absolute URI, forwarding headers.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let target = absolute_target(req);
        let authority = target.authority().map(|a| a.as_str().to_string());
        let origin = target
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<http::Uri>()
            .or_err(InvalidHTTPHeader, "request target")?;
        req.set_uri(origin);
        if let Some(a) = authority {
            req.insert_header(http::header::HOST, a)?;
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = match (&ctx.runtime, peer) {
            (Some(rt), Some(ip)) => rt.is_trusted_proxy(ip),
            _ => false,
        };
        headers::prepare_upstream(req, peer, trusted, false, &ctx.request_id)
    }

    /// Runs for each chunk of the response: frees the slot at its end.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            ctx.upstream_done();
        }
        Ok(None)
    }

    /// Runs when proxying failed: the JSON error.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        respond::fail_to_proxy(session, ctx, e).await
    }

    /// Runs last: metrics and the access log.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        crate::logging::request_done(session, e, ctx);
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
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
        assert!(is_connect(b"CONNECT a:1 HTTP/1.1\r\n\r\n"));
        assert!(!is_connect(b"GET http://a/ HTTP/1.1\r\n\r\n"));
    }
}
