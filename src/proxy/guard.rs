//! The proxy listeners' connection handler: Pingora's HTTP proxy, behind a
//! guard on the request header.
//!
//! Pingora applies its read timeout to each read, so a client trickling one
//! byte at a time keeps a connection forever, and it buffers up to 1 MiB of
//! header. [`EdgeApp`] reads each HTTP/1 request header itself first, under
//! a deadline for the whole header (`server.header_timeout`) and a size cap
//! (`server.max_header_size`, 431 beyond), then hands the bytes to Pingora as
//! a pre-read prefix. HTTP/2 (negotiated by ALPN) goes straight to Pingora.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use super::{Gateway, SharedRuntime};
use crate::limits::{Refusal, RejectReason};

pub struct EdgeApp {
    proxy: Arc<HttpProxy<Gateway>>,
    runtime: SharedRuntime,
}

impl EdgeApp {
    pub fn new(proxy: HttpProxy<Gateway>, runtime: SharedRuntime) -> Self {
        EdgeApp {
            proxy: Arc::new(proxy),
            runtime,
        }
    }
}

/// What reading one request header produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// The header (and whatever followed it in the same reads).
    Complete(BytesMut),
    /// The client closed the connection, or an idle keep-alive expired.
    Closed,
    /// The header did not arrive in time.
    TimedOut,
    /// The header is larger than allowed.
    TooLarge,
}

/// Limits on one request header.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub max_size: usize,
    /// Time for the whole header, counted from the request's first byte (or
    /// from the connection's accept for its first request).
    pub timeout: Duration,
    /// Time to wait for the first byte of a later request on the connection.
    pub idle: Duration,
}

/// Reads one request header from `stream`.
pub async fn read_head<S>(stream: &mut S, limits: HeadLimits, first_request: bool) -> Head
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(4096);
    let deadline = if first_request {
        let deadline = Instant::now() + limits.timeout;
        match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return Head::TimedOut,
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Closed,
            Ok(Ok(_)) => deadline,
        }
    } else {
        match timeout(limits.idle, stream.read_buf(&mut buf)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return Head::Closed,
            Ok(Ok(_)) => Instant::now() + limits.timeout,
        }
    };
    let mut scanned = 0;
    loop {
        if let Some(end) = head_end(&buf, scanned) {
            return if end > limits.max_size {
                Head::TooLarge
            } else {
                Head::Complete(buf)
            };
        }
        if buf.len() > limits.max_size {
            return Head::TooLarge;
        }
        scanned = buf.len().saturating_sub(3);
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return Head::TimedOut,
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Closed,
            Ok(Ok(_)) => {}
        }
    }
}

/// The length of the header block (through its blank line), searching from
/// `from`; leading empty lines before the request line are skipped, as RFC
/// 9112 §2.2 allows.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let from = from.max(start);
    memchr::memchr_iter(b'\n', &buf[from..])
        .map(|i| i + from)
        .find_map(|i| match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        })
}

/// Answers a request the gateway refused before Pingora saw it, and closes
/// the connection. `route` is the metric label.
pub async fn refuse(mut stream: Stream, route: &str, r: Refusal) {
    let reason = r.reason;
    let message = r.message.as_str();
    let body = reason.body(message);
    let status = reason.status();
    let retry = match r.retry_after_header() {
        Some(secs) => format!("retry-after: {secs}\r\n"),
        None => String::new(),
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    crate::metrics::metrics()
        .requests_total
        .with_label_values(&[route, reason.as_str()])
        .inc();
    tracing::info!(target: "access", route = route, outcome = reason.as_str(), status = status.as_u16(), "{message}");
}

/// Reads the next request header on an HTTP/1 connection, under the limits
/// of the current config; answers 408 or 431 itself. `None`: the connection
/// is done.
pub async fn next_head(
    stream: &mut Option<Stream>,
    runtime: &SharedRuntime,
    first: bool,
) -> Option<(BytesMut, HeadLimits)> {
    let limits = {
        let rt = runtime.load();
        let s = &rt.config.server;
        HeadLimits {
            max_size: s.max_header_size,
            timeout: s.header_timeout,
            idle: s.keepalive_timeout,
        }
    };
    let io = stream.as_mut()?;
    let refused = match read_head(io, limits, first).await {
        Head::Complete(buf) => return Some((buf, limits)),
        Head::Closed => return None,
        Head::TimedOut => Refusal::new(
            RejectReason::RequestTimeout,
            format!(
                "the request header was not received within {:?}",
                limits.timeout
            ),
        ),
        Head::TooLarge => Refusal::new(
            RejectReason::HeadersTooLarge,
            format!("request headers are larger than {} bytes", limits.max_size),
        ),
    };
    if let Some(io) = stream.take() {
        refuse(io, crate::metrics::NO_ROUTE_LABEL, refused).await;
    }
    None
}

/// Hands a connection whose next request header has been read to Pingora's
/// HTTP/1 handling; returns the connection when it may carry another
/// request.
pub async fn hand_to_pingora<P: HttpServerApp + Send + Sync + 'static>(
    proxy: &Arc<P>,
    stream: Stream,
    head: BytesMut,
    limits: HeadLimits,
    settings: Option<HttpPersistentSettings>,
    shutdown: &ShutdownWatch,
) -> Option<(Stream, Option<HttpPersistentSettings>)> {
    let mut session = ServerSession::new_http1(stream);
    match settings {
        Some(s) => s.apply_to_session(&mut session),
        None => session.set_keepalive(Some(limits.idle.as_secs().max(1))),
    }
    if *shutdown.borrow() {
        session.set_keepalive(None);
    }
    session.set_pipelined_prefix(head);
    let reused = proxy.process_new_http(session, shutdown).await?;
    Some(reused.consume())
}

/// Serves an HTTP/1 connection request by request: each header read under
/// the guard, then handed to Pingora. A request whose header `divert`
/// accepts (a CONNECT on the forward proxy) is returned with its connection
/// instead; `None` when the connection is done.
pub async fn serve_http1<P: HttpServerApp + Send + Sync + 'static>(
    proxy: &Arc<P>,
    runtime: &SharedRuntime,
    stream: Stream,
    shutdown: &ShutdownWatch,
    divert: impl Fn(&[u8]) -> bool,
) -> Option<(Stream, BytesMut)> {
    let mut stream = Some(stream);
    let mut settings: Option<HttpPersistentSettings> = None;
    let mut first = true;
    loop {
        let (head, limits) = next_head(&mut stream, runtime, first).await?;
        let io = stream.take()?;
        if divert(&head) {
            return Some((io, head));
        }
        let (io, st) = hand_to_pingora(proxy, io, head, limits, settings.take(), shutdown).await?;
        stream = Some(io);
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
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.proxy.process_new(stream, shutdown).await;
        }
        // No request is diverted on the reverse proxy.
        let _ = serve_http1(&self.proxy, &self.runtime, stream, shutdown, |_| false).await;
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_size: 64,
        timeout: Duration::from_millis(200),
        idle: Duration::from_millis(200),
    };

    #[test]
    fn finds_the_blank_line() {
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", 0),
            Some(27)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
        assert_eq!(head_end(b"\r\nGET / HTTP/1.1\r\n\r\n", 0), Some(20));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
    }

    #[tokio::test]
    async fn complete_header_with_body_bytes() {
        let mut s = tokio_test_stream(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nxyz").await;
        match read_head(&mut s, LIMITS, true).await {
            Head::Complete(b) => assert!(b.ends_with(b"xyz")),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn too_large_and_closed() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100));
        let mut s = tokio_test_stream(big.as_bytes()).await;
        assert_eq!(read_head(&mut s, LIMITS, true).await, Head::TooLarge);
        let mut s = tokio_test_stream(b"GET / HT").await;
        assert_eq!(read_head(&mut s, LIMITS, true).await, Head::Closed);
    }

    #[tokio::test]
    async fn slow_header_times_out_as_a_whole() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            // One byte every 50 ms: each read is quick, the header never ends.
            for _ in 0..100 {
                if client.write_all(b"G").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let started = Instant::now();
        assert_eq!(read_head(&mut server, LIMITS, true).await, Head::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    async fn tokio_test_stream(data: &[u8]) -> tokio::io::DuplexStream {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(data).await.unwrap();
        drop(client);
        server
    }
}
