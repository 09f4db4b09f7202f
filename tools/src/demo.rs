//! A small, real HTTP/1.1 upstream: the README's demo backend, the
//! docker-compose demo service, and the backend integration tests and
//! benchmarks start on an ephemeral port.
//!
//! Every response is JSON describing the request it answers (method, path,
//! headers, the server's name), so a caller can see what the gateway
//! forwarded. Query parameters shape the answer:
//! - `delay_ms=N`: wait N ms before answering;
//! - `work_ms=N`: wait N ms for every request in flight (latency that grows
//!   with concurrency);
//! - `GET /__stats`: requests received, in flight, and the most in flight
//!   at once (not counted itself);
//! - `GET /metrics`: a `demo_load` gauge for Prometheus, set with
//!   `GET /__set?load=X`;
//! - `status=N`: answer with status N;
//! - `usage=N`: report `N` tokens used, OpenAI style (`usage.total_tokens`);
//! - `usage_header=N`: report `N` tokens in an `x-usage-tokens` header;
//! - `header=NAME:VALUE`: answer with that header as well (repeatable);
//! - `stream=K` (with `usage`): answer as a server-sent event stream of K
//!   chunks, the last event carrying the usage;
//! - `empty=1`: answer with an empty body (`Content-Length: 0`);
//! - `size=N`: answer with N bytes (`x`, at most 64 MiB) instead of JSON;
//! - `POST` to an LLM API path (`…/chat/completions`, `…/responses`,
//!   `…/messages`, `…:generateContent`): that API's answer, plain or
//!   streamed (see [`crate::llm`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Counters a test can read while the server runs.
#[derive(Debug, Default)]
pub struct DemoStats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests being answered right now.
    pub in_flight: AtomicU64,
    /// The most requests ever answered at once.
    pub max_in_flight: AtomicU64,
    /// The `demo_load` gauge served on `/metrics` (f64 bits).
    pub load: AtomicU64,
}

/// Serves until the task is dropped; each connection on its own task. With
/// `tls`, connections are TLS first (see [`tls_acceptor`]).
pub async fn serve(
    listener: TcpListener,
    name: String,
    stats: Arc<DemoStats>,
    tls: Option<TlsAcceptor>,
) {
    let name: Arc<str> = Arc::from(name);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let name = name.clone();
        let stats = stats.clone();
        match &tls {
            None => {
                tokio::spawn(serve_connection(tcp, name, stats));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        serve_connection(stream, name, stats).await;
                    }
                });
            }
        }
    }
}

/// A TLS acceptor from PEM certificate-chain and key files.
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, String> {
    use tokio_rustls::rustls;
    let certs = std::fs::read(cert_file).map_err(|e| format!("{}: {e}", cert_file.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut certs.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    let key = std::fs::read(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let key = rustls_pemfile::private_key(&mut key.as_slice())
        .map_err(|e| format!("{}: {e}", key_file.display()))?
        .ok_or_else(|| format!("{}: no private key", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves HTTP/1.1 on one established connection (plain or TLS).
pub async fn serve_connection<S>(io: S, name: Arc<str>, stats: Arc<DemoStats>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(req, name.clone(), stats.clone()));
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

struct InFlight<'a>(&'a DemoStats);

impl<'a> InFlight<'a> {
    fn enter(s: &'a DemoStats) -> Self {
        s.requests.fetch_add(1, Ordering::SeqCst);
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(s)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    req: Request<Incoming>,
    name: Arc<str>,
    stats: Arc<DemoStats>,
) -> Result<Response<DemoBody>, Infallible> {
    handle_full(req, name, stats).await
}

/// A response body: whole, or streamed chunk by chunk.
pub type DemoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn whole(b: impl Into<Bytes>) -> DemoBody {
    Full::new(b.into()).boxed()
}

/// An LLM API answer (see `crate::llm`), streamed with its delays.
fn llm_response(r: crate::llm::Reply) -> Response<DemoBody> {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let delay = r.delay;
    let stream = futures_util::stream::unfold(r.chunks.into_iter(), move |mut it| async move {
        let c = it.next()?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Some((Ok::<_, Infallible>(Frame::data(c)), it))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(r.content_type),
    );
    resp
}

async fn handle_full(
    req: Request<Incoming>,
    name: Arc<str>,
    stats: Arc<DemoStats>,
) -> Result<Response<DemoBody>, Infallible> {
    if req.uri().path() == "/metrics" {
        // A gauge a test (or a demo) moves with /__set?load=X, for
        // Prometheus to scrape and the adaptive window to react to.
        let load = f64::from_bits(stats.load.load(Ordering::SeqCst));
        let body = format!(
            "# HELP demo_load A load signal set through /__set?load=X.\n# TYPE demo_load gauge\ndemo_load {load}\n# TYPE demo_requests_total counter\ndemo_requests_total {}\n# TYPE demo_inflight gauge\ndemo_inflight {}\n",
            stats.requests.load(Ordering::SeqCst),
            stats.in_flight.load(Ordering::SeqCst)
        );
        return Ok(Response::new(whole(body)));
    }
    if req.uri().path() == "/__set" {
        let load = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("load="))
            .and_then(|v| v.parse::<f64>().ok());
        let mut resp = Response::new(whole("{}"));
        match load {
            Some(v) => stats.load.store(v.to_bits(), Ordering::SeqCst),
            None => *resp.status_mut() = hyper::StatusCode::BAD_REQUEST,
        }
        return Ok(resp);
    }
    if req.uri().path() == "/__stats" {
        let body = serde_json::json!({
            "requests": stats.requests.load(Ordering::SeqCst),
            "in_flight": stats.in_flight.load(Ordering::SeqCst),
            "max_in_flight": stats.max_in_flight.load(Ordering::SeqCst),
        });
        return Ok(Response::new(whole(body.to_string())));
    }
    let _guard = InFlight::enter(&stats);
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    // `header=NAME:VALUE`, as often as it is given.
    let extra: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.strip_prefix("header="))
                .filter_map(|h| h.split_once(':'))
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body_len = body.len();
    if let (true, Some(format)) = (method == "POST", crate::llm::format_of(&path)) {
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
            let mut resp = Response::new(whole(r#"{"error":{"message":"the body is not JSON"}}"#));
            *resp.status_mut() = hyper::StatusCode::BAD_REQUEST;
            return Ok(resp);
        };
        return Ok(llm_response(crate::llm::reply(
            format, &path, &json, &query, &name,
        )));
    }
    if let Some(ms) = query.get("delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.min(120_000))).await;
    }
    // A backend whose latency grows with its concurrency: `work_ms` per
    // request in flight (so its throughput tops out at 1000/work_ms per
    // second, and latency climbs past any timeout under enough load).
    if let Some(ms) = query.get("work_ms").and_then(|v| v.parse::<f64>().ok()) {
        let inflight = stats.in_flight.load(Ordering::SeqCst) as f64;
        tokio::time::sleep(Duration::from_secs_f64((ms * inflight / 1000.0).min(120.0))).await;
    }
    let status = query
        .get("status")
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|s| hyper::StatusCode::from_u16(s).ok())
        .unwrap_or(hyper::StatusCode::OK);
    let usage: Option<u64> = query.get("usage").and_then(|v| v.parse().ok());
    let mut body = serde_json::json!({
        "server": &*name,
        "method": method,
        "path": path,
        "headers": headers,
        "body_bytes": body_len,
    });
    if let Some(n) = usage {
        body["usage"] = serde_json::json!({
            "prompt_tokens": n / 2,
            "completion_tokens": n - n / 2,
            "total_tokens": n,
        });
    }
    let stream: Option<usize> = query.get("stream").and_then(|v| v.parse().ok());
    let (content_type, payload) = match stream {
        Some(k) => {
            let mut s = String::new();
            for i in 0..k {
                let ev = serde_json::json!({
                    "server": &*name,
                    "choices": [{"delta": {"content": format!("chunk {i} ")}}],
                    "usage": serde_json::Value::Null,
                });
                s.push_str(&format!("data: {ev}\n\n"));
            }
            let last = serde_json::json!({ "choices": [], "usage": body["usage"].clone() });
            s.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
            ("text/event-stream", s)
        }
        None => ("application/json", body.to_string()),
    };
    let size = query.get("size").and_then(|v| v.parse::<usize>().ok());
    let payload = if query.contains_key("empty") {
        String::new()
    } else if let Some(n) = size {
        "x".repeat(n.min(64 << 20))
    } else {
        payload
    };
    let mut resp = Response::new(whole(payload));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if let Some(v) = query
        .get("usage_header")
        .and_then(|v| hyper::header::HeaderValue::from_str(v).ok())
    {
        resp.headers_mut().insert("x-usage-tokens", v);
    }
    for (name, value) in &extra {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    Ok(resp)
}
