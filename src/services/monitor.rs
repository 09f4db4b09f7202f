//! Background service: reads every adaptive window's Prometheus queries
//! every `interval`, from boot on, and applies the readings to the window.
//!
//! Each query runs with a timeout shorter than the interval and must yield
//! one finite number (a scalar, or a vector of exactly one sample); anything
//! else is an error for that query, counted in
//! `floodgate_backpressure_monitor_errors_total` and logged. The request
//! path never waits for Prometheus: it only reads the window.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{PrometheusAuth, PrometheusEndpoint};
use crate::runtime::{AdaptiveWindow, SharedRuntime};

pub struct Monitor {
    runtime: SharedRuntime,
}

impl Monitor {
    pub fn new(runtime: SharedRuntime) -> Self {
        Monitor { runtime }
    }
}

const TICK: Duration = Duration::from_millis(50);

#[async_trait]
impl BackgroundService for Monitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last: HashMap<String, Instant> = HashMap::new();
        // One client per window, kept while its endpoint is unchanged (so
        // its connections are reused from one reading to the next).
        let mut clients: HashMap<String, (PrometheusEndpoint, Prometheus)> = HashMap::new();
        loop {
            let rt = self.runtime.load_full();
            let now = Instant::now();
            for window in rt.adaptive_windows() {
                let due = last
                    .get(&window.name)
                    .is_none_or(|t| now.duration_since(*t) >= window.config.interval);
                if !due {
                    continue;
                }
                last.insert(window.name.clone(), now);
                let endpoint = &window.config.prometheus;
                let fresh = clients.get(&window.name).is_none_or(|(e, _)| e != endpoint);
                if fresh {
                    let client = Prometheus::new(endpoint).await;
                    clients.insert(window.name.clone(), (endpoint.clone(), client));
                }
                if let Some((_, client)) = clients.get(&window.name) {
                    tokio::spawn(read_window(window.clone(), client.clone()));
                }
            }
            drop(rt);
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// One reading cycle of one window: every query at once, then evaluate.
async fn read_window(window: AdaptiveWindow, prometheus: Prometheus) {
    let cfg = &window.config;
    let reads = cfg.adaptive.signals.iter().map(|s| {
        let timeout = cfg.query_timeout;
        let prometheus = &prometheus;
        async move {
            match tokio::time::timeout(timeout, prometheus.query(&s.query)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            }
        }
    });
    let results = futures::future::join_all(reads).await;
    let errors = &crate::metrics::metrics().backpressure_monitor_errors_total;
    for (i, (sig, r)) in cfg.adaptive.signals.iter().zip(results).enumerate() {
        // Present at 0 from the first reading on, so rates and alerts see it.
        let counter = errors.with_label_values(&[window.name.as_str(), sig.name.as_str()]);
        if let Err(e) = &r {
            counter.inc();
            tracing::warn!(
                target: "monitor",
                scope = %window.name,
                query = %sig.name,
                prometheus = %cfg.prometheus,
                "query failed: {e}"
            );
        }
        window.controller.record(i, r);
    }
    window.controller.evaluate();
}

/// A client of one Prometheus HTTP API (or Mimir, Thanos, Cortex: anything
/// that answers `/api/v1/query`), over HTTP or HTTPS, with its credentials
/// and extra headers.
#[derive(Clone)]
pub struct Prometheus {
    query_url: Result<url::Url, String>,
    client: Result<reqwest::Client, String>,
    auth: Option<Credentials>,
}

#[derive(Clone)]
enum Credentials {
    Bearer(String),
    Basic(String, String),
}

impl Prometheus {
    /// Builds the client. Credentials are read from the environment here;
    /// a missing variable makes every query fail with a message that names
    /// it (the monitor counts and logs it; the gateway keeps serving).
    pub async fn new(endpoint: &PrometheusEndpoint) -> Self {
        let env = |name: &str| {
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
        };
        let (auth, auth_error) = match &endpoint.auth {
            None => (None, None),
            Some(PrometheusAuth::Bearer { token_env }) => match env(token_env) {
                Ok(t) => (Some(Credentials::Bearer(t)), None),
                Err(e) => (None, Some(e)),
            },
            Some(PrometheusAuth::Basic {
                username,
                password_env,
            }) => match env(password_env) {
                Ok(p) => (Some(Credentials::Basic(username.clone(), p)), None),
                Err(e) => (None, Some(e)),
            },
        };
        let headers: reqwest::header::HeaderMap = endpoint.headers.iter().cloned().collect();
        let client = match auth_error {
            Some(e) => Err(e),
            None => {
                let mut b = reqwest::Client::builder()
                    .default_headers(headers)
                    .user_agent(concat!("floodgate/", env!("CARGO_PKG_VERSION")));
                let roots = match endpoint.ca_file.as_deref() {
                    Some(f) => load_roots(f).await.map(Some),
                    None => Ok(None),
                };
                match roots {
                    Ok(roots) => {
                        for c in roots.unwrap_or_default() {
                            b = b.add_root_certificate(c);
                        }
                        b.build()
                            .map_err(|e| format!("cannot build an HTTP client: {e}"))
                    }
                    Err(e) => Err(e),
                }
            }
        };
        Prometheus {
            query_url: endpoint
                .url
                .join("api/v1/query")
                .map_err(|e| format!("{}: {e}", endpoint.url)),
            client,
            auth,
        }
    }

    /// Runs one instant query and returns its one number.
    pub async fn query(&self, query: &str) -> Result<f64, String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let url = self.query_url.as_ref().map_err(Clone::clone)?;
        let mut req = client.get(url.clone()).query(&[("query", query)]);
        req = match &self.auth {
            None => req,
            Some(Credentials::Bearer(t)) => req.bearer_auth(t),
            Some(Credentials::Basic(u, p)) => req.basic_auth(u, Some(p)),
        };
        let resp = req.send().await.map_err(|e| {
            let e = e.without_url();
            format!("{}: {}", url.origin().ascii_serialization(), causes(&e))
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| causes(&e.without_url()))?;
        parse_query_result(&body).map_err(|e| format!("{e} (HTTP {status})"))
    }
}

/// An error and its causes, one after the other (reqwest's own message is
/// only "error sending request").
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The CA certificates of a PEM file.
async fn load_roots(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = tokio::fs::read(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// The one number an instant query's answer holds.
pub fn parse_query_result(body: &[u8]) -> Result<f64, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not a Prometheus answer: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "query failed: {}",
            v["error"].as_str().unwrap_or("unknown error")
        ));
    }
    let data = &v["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => match data["result"].as_array().map(|a| a.as_slice()) {
            Some([one]) => &one["value"],
            Some(many) => {
                return Err(format!(
                    "the query yields {} series, not one number",
                    many.len()
                ))
            }
            None => return Err("malformed vector".into()),
        },
        other => return Err(format!("result type {other:?} is not a number")),
    };
    let value: f64 = sample[1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or("malformed sample")?;
    if !value.is_finite() {
        return Err(format!("the query yields {value}, not a finite number"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query, the tenant header and the bearer token reach the server
    /// (a real HTTP exchange on loopback).
    #[tokio::test]
    async fn sends_query_headers_and_credentials() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                n += s.read(&mut buf[n..]).await.unwrap();
            }
            let body = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"0.25"]}}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).to_lowercase()
        });
        std::env::set_var("FLOODGATE_TEST_PROM_TOKEN", "tok-123");
        let endpoint = PrometheusEndpoint {
            url: url::Url::parse(&format!("http://{addr}/prefix/")).unwrap(),
            auth: Some(PrometheusAuth::Bearer {
                token_env: "FLOODGATE_TEST_PROM_TOKEN".into(),
            }),
            headers: vec![(
                http::HeaderName::from_static("x-scope-orgid"),
                http::HeaderValue::from_static("tenant-a"),
            )],
            ca_file: None,
        };
        let p = Prometheus::new(&endpoint).await;
        assert_eq!(p.query("sum(rate(x[1m]))").await, Ok(0.25));
        let req = server.await.unwrap();
        assert!(
            req.starts_with("get /prefix/api/v1/query?query=sum%28rate%28x%5b1m%5d%29%29 "),
            "{req}"
        );
        assert!(req.contains("\r\nx-scope-orgid: tenant-a\r\n"), "{req}");
        assert!(
            req.contains("\r\nauthorization: bearer tok-123\r\n"),
            "{req}"
        );
        // A missing variable is an error naming it, not a panic.
        let endpoint = PrometheusEndpoint {
            auth: Some(PrometheusAuth::Bearer {
                token_env: "FLOODGATE_TEST_UNSET".into(),
            }),
            ..endpoint
        };
        let e = Prometheus::new(&endpoint)
            .await
            .query("x")
            .await
            .unwrap_err();
        assert!(e.contains("FLOODGATE_TEST_UNSET"), "{e}");
    }

    #[test]
    fn results() {
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"0.75"]}}"#;
        assert_eq!(parse_query_result(scalar), Ok(0.75));
        let one = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"3"]}]}}"#;
        assert_eq!(parse_query_result(one), Ok(3.0));
        let none = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(parse_query_result(none).is_err());
        let two = br#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}}"#;
        assert!(parse_query_result(two).is_err());
        let nan = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#;
        assert!(parse_query_result(nan).is_err());
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert_eq!(
            parse_query_result(bad),
            Err("query failed: parse error".into())
        );
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(parse_query_result(matrix).is_err());
    }
}
