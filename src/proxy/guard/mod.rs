//! The listeners' connection handler: what happens to a connection before
//! Pingora's HTTP proxy sees a request on it.
//!
//! ```text
//! accept ─▶ caps: the listener's, the client address's    → closed at once
//!        ─▶ TLS handshake within tls_handshake_timeout      → closed
//!        ─▶ HTTP/2 (ALPN): Pingora, with a deadline on every header block
//!        ─▶ HTTP/1: per request, in order (pipelining served in turn):
//!             header within header_timeout, at most max_header_size → 408 / 431
//!             framing looked at (Host, Content-Length, chunked, …)   → 400
//!             a body up to request_buffer_size read in full,
//!             no pause over body_idle_timeout, all in body_timeout   → 408
//!             then Pingora reads that one request through a fence;
//!             the bytes of the next one (pipelining) wait for the guard,
//!             or after an upgrade request for its answer: a 101 opens
//!             the tunnel to them
//! ```
//!
//! Pingora applies its read timeout to each read, so a client trickling one
//! byte at a time keeps a connection forever; it never times out a TLS
//! handshake before 60 s, nor an HTTP/2 header block; and it would take an
//! upstream slot for a request whose body is still on its way. The guard
//! keeps those deadlines, so a slow client costs a connection, never an
//! upstream slot. Everything it refuses is answered in JSON with a request
//! id, and counted and logged like any refusal.

mod fence;
mod h2;
pub mod http1;
mod wrap;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use super::Gateway;
use crate::limits::listeners::{ConnectionCaps, ConnectionGate, Full};
use crate::limits::{Refusal, RejectReason};
use crate::runtime::SharedRuntime;
use fence::Fence;
use http1::{Limits, Step};

/// What every listener of a proxy service shares: TLS acceptors (by
/// listener address) and connection caps.
pub struct Listeners {
    /// The TLS listeners and their acceptors.
    tls: Vec<(SocketAddr, Arc<Acceptor>)>,
    /// Each listener's open connections.
    gates: Vec<(SocketAddr, Arc<ConnectionGate>)>,
    /// Connections a listener holds at most (0 = none).
    per_listener: u64,
}

impl Listeners {
    pub fn new(
        plain: &[SocketAddr],
        tls: Vec<(SocketAddr, Arc<Acceptor>)>,
        per_listener: u64,
    ) -> Self {
        let gates = plain
            .iter()
            .chain(tls.iter().map(|(a, _)| a))
            .map(|a| (*a, ConnectionGate::new()))
            .collect();
        Listeners {
            tls,
            gates,
            per_listener,
        }
    }

    /// The entry of the listener a connection arrived on: its exact address,
    /// else one on an unspecified address and the same port.
    fn find<T>(list: &[(SocketAddr, T)], local: Option<SocketAddr>) -> Option<&T> {
        let local = local?;
        list.iter()
            .find(|(a, _)| *a == local)
            .or_else(|| {
                list.iter()
                    .find(|(a, _)| a.ip().is_unspecified() && a.port() == local.port())
            })
            .map(|(_, t)| t)
    }

    /// Admits a connection under its listener's caps and, for a TLS
    /// listener, completes its handshake within the deadline. `None`: the
    /// connection is closed (over a cap, or no handshake in time).
    pub async fn accept(
        &self,
        stream: Stream,
        runtime: &SharedRuntime,
    ) -> Option<(Stream, crate::limits::listeners::ConnectionPermit)> {
        let digest = stream.get_socket_digest();
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet().copied()));
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().map(|a| a.ip())))
            // An IPv4 client on an IPv6 listener is its IPv4 address.
            .map(|ip| ip.to_canonical());
        let (caps, handshake, trusted) = {
            let rt = runtime.load();
            let s = &rt.config.server;
            let caps = ConnectionCaps {
                per_listener: self.per_listener,
                per_ip: s.max_connections_per_ip,
            };
            (
                caps,
                s.tls_handshake_timeout,
                peer.is_some_and(|p| rt.is_trusted_proxy(p)),
            )
        };
        let gate = Self::find(&self.gates, local)?;
        let permit = match gate.admit(peer, caps, trusted) {
            Ok(p) => p,
            Err(full) => {
                let reason = match full {
                    Full::Listener => "listener",
                    Full::Address => "address",
                };
                crate::metrics::metrics()
                    .connections_refused_total
                    .with_label_values(&[reason])
                    .inc();
                return None;
            }
        };
        let Some(acceptor) = Self::find(&self.tls, local) else {
            return Some((stream, permit));
        };
        let l4 = stream
            .into_any()
            .downcast::<pingora::protocols::l4::stream::Stream>()
            .ok()?;
        match tokio::time::timeout(handshake, acceptor.tls_handshake(*l4)).await {
            Ok(Ok(tls)) => Some((Box::new(tls), permit)),
            Ok(Err(e)) => {
                tracing::debug!(target: "tls", "handshake failed: {e}");
                None
            }
            Err(_) => {
                crate::metrics::metrics()
                    .connections_refused_total
                    .with_label_values(&["tls_handshake_timeout"])
                    .inc();
                None
            }
        }
    }
}

/// The reverse proxy's listeners: the guard in front of Pingora's proxy.
pub struct EdgeApp {
    proxy: Arc<HttpProxy<Gateway>>,
    runtime: SharedRuntime,
    listeners: Listeners,
}

impl EdgeApp {
    pub fn new(proxy: HttpProxy<Gateway>, runtime: SharedRuntime, listeners: Listeners) -> Self {
        EdgeApp {
            proxy: Arc::new(proxy),
            runtime,
            listeners,
        }
    }
}

/// The limits of the next request, from the current config.
fn limits(runtime: &SharedRuntime) -> (Limits, Duration) {
    let rt = runtime.load();
    let s = &rt.config.server;
    (
        Limits {
            max_header_size: s.max_header_size,
            header_timeout: s.header_timeout,
            idle: s.keepalive_timeout,
            buffer_size: s.request_buffer_size,
            body_idle: s.body_idle_timeout,
            body_total: s.body_timeout,
        },
        s.client_write_timeout,
    )
}

/// Answers a request the gateway refused before Pingora saw it, and closes
/// the connection. `route` is the metric label.
pub async fn refuse(mut stream: Stream, route: &str, r: Refusal, request_id: Option<&str>) {
    let reason = r.reason;
    let message = r.message.as_str();
    let body = reason.body(message);
    let status = reason.status();
    let retry = match r.retry_after_header() {
        Some(secs) => format!("retry-after: {secs}\r\n"),
        None => String::new(),
    };
    let request_id = request_id
        .filter(|id| super::headers::valid_request_id(id.as_bytes()))
        .map(str::to_string)
        .unwrap_or_else(super::headers::new_request_id);
    // `Date`, as on every answer Pingora writes (RFC 9110 §6.6.1; found by
    // a hostile-client run: the guard's own refusals had none).
    let date = pingora::protocols::http::date::get_cached_date();
    let head = format!(
        "HTTP/1.1 {} {}\r\ndate: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\n{retry}connection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        String::from_utf8_lossy(date.as_bytes()),
        body.len()
    );
    // A client that does not read its answer does not keep the connection.
    let write = async {
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&body).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
    crate::metrics::metrics()
        .requests_total
        .with_label_values(&[route, reason.as_str()])
        .inc();
    tracing::info!(
        target: "access",
        request_id = %request_id,
        route = route,
        outcome = reason.as_str(),
        status = status.as_u16(),
        "{message}"
    );
}

/// The buffer the next request is read into, holding the bytes of it read
/// so far (`buf[end..]`, taken off `buf`). A small buffer's rest: Pingora
/// keeps this request's header (it parses it in place) until the request
/// is done, and then the buffer is reclaimed whole for a later request,
/// with no allocation a request. A large one (a body read whole) is not
/// shared: a part of it kept for the next request would keep all of it
/// for as long as the connection stays open.
fn next_request_buffer(buf: &mut BytesMut, end: usize) -> BytesMut {
    match buf.capacity() <= fence::REUSE_MAX {
        true => buf.split_off(end),
        false => {
            let next = BytesMut::from(&buf[end..]);
            buf.truncate(end);
            next
        }
    }
}

/// What the guard read of a request that Pingora is handed, besides the
/// body bytes in the fence.
pub struct ReadAhead {
    /// The header block, through its blank line: Pingora parses it as it
    /// stands, before it reads the stream.
    pub header: BytesMut,
    /// A JSON body read whole, for the request's context (an LLM route
    /// estimates from it); the request still reads it from the fence.
    pub json_body: Option<bytes::Bytes>,
}

/// Hands a connection whose next request has been read (its header, and
/// its body when small enough) to Pingora's HTTP/1 handling, through a
/// [`Fence`] that shows it that one request only; returns the fence (over
/// the connection, with the next request's bytes) when the connection may
/// carry another request.
pub async fn hand_to_pingora<P: HttpServerApp + Send + Sync + 'static>(
    proxy: &Arc<P>,
    fence: Box<Fence>,
    request: ReadAhead,
    limits: Limits,
    write_timeout: Duration,
    settings: Option<HttpPersistentSettings>,
    shutdown: &ShutdownWatch,
) -> Option<(Box<Fence>, Option<HttpPersistentSettings>)> {
    // The fence's box is Pingora's stream (no new allocation), and comes
    // back as it went. The session is boxed here, where Pingora would box
    // it (it keeps it boxed), so that it is not copied on the way in.
    let mut session = Box::new(ServerSession::new_http1(fence));
    match settings {
        Some(s) => s.apply_to_session(&mut session),
        None => session.set_keepalive(Some(limits.idle.as_secs().max(1))),
    }
    // Pingora parses the request's header from the bytes the guard read
    // (its pipelined prefix: parsed before any read of the stream).
    session.set_pipelined_prefix(request.header);
    if let Some(b) = request.json_body {
        session.set_connection_user_context(Some(Box::new(super::context::RequestBody(b))));
    }
    if *shutdown.borrow() {
        session.set_keepalive(None);
    }
    // A body too large to read here streams: no pause over the body idle
    // time (each read), and a client that stops reading its answer is let
    // go after the write timeout.
    session.set_read_timeout(Some(limits.body_idle));
    session.set_write_timeout(Some(write_timeout));
    // Pingora's request future, built in place in this connection's own
    // future (allocated once per connection): `process_new_http` would box
    // it and move its ~13.5 KB into the box for every request (see
    // vendor/README.md).
    let reused = proxy.process_new_http_unboxed(session, shutdown).await?;
    let (stream, settings) = reused.consume();
    let fence = stream.into_any().downcast::<Fence>().ok()?;
    Some((fence, settings))
}

/// Serves an HTTP/1 connection request by request, in order: each read
/// under the guard, then handed to Pingora. A request whose head `divert`
/// accepts (a CONNECT on the forward proxy) is returned with its connection
/// and bytes instead; `None` when the connection is done.
pub async fn serve_http1<P: HttpServerApp + Send + Sync + 'static>(
    proxy: &Arc<P>,
    runtime: &SharedRuntime,
    stream: Stream,
    shutdown: &ShutdownWatch,
    route_label: &str,
    divert: impl Fn(&http1::Head) -> bool,
) -> Option<(Stream, BytesMut, http1::Head)> {
    // One fence for the connection's every request: the guard reads each
    // request from the connection under it, then Pingora reads that one
    // request through it.
    let mut fence = Box::new(Fence::new(
        stream,
        BytesMut::new(),
        http1::Rest::Done,
        BytesMut::new(),
    ));
    let mut settings: Option<HttpPersistentSettings> = None;
    let mut first = true;
    let mut idle = http1::IdleWait::default();
    loop {
        let (limits, write_timeout) = limits(runtime);
        let mut buf = fence.take_next();
        let request = http1::read(
            fence.stream_mut(),
            &mut buf,
            limits,
            first,
            shutdown,
            &mut idle,
        );
        let (head, end, rest) = match request.await {
            Step::Request { head, end, rest } => (head, end, rest),
            Step::Closed => return None,
            Step::Refused(r) => {
                let id = http1::find_request_id(&buf);
                let (stream, _) = fence.into_parts();
                refuse(stream, route_label, r, id.as_deref()).await;
                return None;
            }
        };
        if divert(&head) {
            let (stream, _) = fence.into_parts();
            return Some((stream, buf, head));
        }
        if head.connect {
            let r = Refusal::new(
                RejectReason::MethodNotAllowed,
                "CONNECT is served by the forward proxy's listener, not here",
            );
            let (stream, _) = fence.into_parts();
            refuse(stream, route_label, r, None).await;
            return None;
        }
        let next = next_request_buffer(&mut buf, end);
        let body = match (head.json, head.framing, &rest) {
            (true, http1::Framing::Length(n), http1::Rest::Done)
                if buf.len() >= head.len + n as usize =>
            {
                Some(bytes::Bytes::copy_from_slice(
                    &buf[head.len..head.len + n as usize],
                ))
            }
            _ => None,
        };
        // The header is Pingora's parse buffer as it stands (no read
        // through the fence, no copy); the fence gives the body bytes read
        // here, then the rest of the body.
        let ahead = match buf.len() > head.len {
            true => buf.split_off(head.len),
            false => BytesMut::new(),
        };
        fence.set_request(ahead, rest, next);
        if head.upgrade {
            fence.await_upgrade();
        }
        let (f, st) = hand_to_pingora(
            proxy,
            fence,
            ReadAhead {
                header: buf,
                json_body: body,
            },
            limits,
            write_timeout,
            settings.take(),
            shutdown,
        )
        .await?;
        fence = f;
        settings = st;
        first = false;
    }
}

#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (stream, _permit) = self.listeners.accept(stream, &self.runtime).await?;
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let limits = {
                let rt = self.runtime.load();
                let s = &rt.config.server;
                h2::H2Limits {
                    header_timeout: s.header_timeout,
                    body_idle: s.body_idle_timeout,
                    body_total: s.body_timeout,
                }
            };
            let watched: Stream = Box::new(h2::H2Watch::new(stream, limits));
            let _ = self.proxy.process_new(watched, shutdown).await;
            return None;
        }
        // No request is diverted on the reverse proxy.
        let _ = serve_http1(
            &self.proxy,
            &self.runtime,
            stream,
            shutdown,
            crate::metrics::NO_ROUTE_LABEL,
            |_| false,
        )
        .await;
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next request is read into the rest of a small request's buffer
    /// (no allocation); a large buffer (a body read whole) is not shared
    /// with it, which would keep all of it for as long as the connection
    /// stays open (found reading this stop's change over).
    #[test]
    fn only_a_small_buffer_is_kept_for_the_next_request() {
        let mut small = BytesMut::with_capacity(4096);
        small.extend_from_slice(b"GET / HTTP/1.1\r\n\r\nGET");
        let next = next_request_buffer(&mut small, 18);
        assert_eq!(&small[..], b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(&next[..], b"GET");
        assert!(next.capacity() >= 4096 - 18, "{}", next.capacity());

        let mut large = BytesMut::with_capacity(64 * 1024);
        large.extend_from_slice(&[b'a'; 40_000]);
        large.extend_from_slice(b"GET");
        let next = next_request_buffer(&mut large, 40_000);
        assert_eq!(large.len(), 40_000);
        assert_eq!(&next[..], b"GET");
        assert!(next.capacity() < 1024, "{}", next.capacity());
        let mut large = BytesMut::with_capacity(64 * 1024);
        large.extend_from_slice(&[b'a'; 40_000]);
        let next = next_request_buffer(&mut large, 40_000);
        assert_eq!(next.capacity(), 0);
    }
}
