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
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::PrometheusUrl;
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
        loop {
            let rt = self.runtime.load_full();
            let now = Instant::now();
            for scope in rt.adaptive_scopes() {
                let due = last
                    .get(&scope.name)
                    .is_none_or(|t| now.duration_since(*t) >= scope.config.interval);
                if due {
                    last.insert(scope.name.clone(), now);
                    tokio::spawn(read_scope(scope.clone()));
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
async fn read_scope(scope: AdaptiveWindow) {
    let cfg = &scope.config;
    let reads = cfg.adaptive.signals.iter().map(|s| {
        let url = cfg.prometheus.clone();
        let timeout = cfg.query_timeout;
        let query = s.query.clone();
        async move {
            match tokio::time::timeout(timeout, query_prometheus(&url, &query)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            }
        }
    });
    let results = futures::future::join_all(reads).await;
    let errors = &crate::metrics::metrics().backpressure_monitor_errors_total;
    for (i, (sig, r)) in cfg.adaptive.signals.iter().zip(results).enumerate() {
        // Present at 0 from the first reading on, so rates and alerts see it.
        let counter = errors.with_label_values(&[scope.name.as_str(), sig.name.as_str()]);
        if let Err(e) = &r {
            counter.inc();
            tracing::warn!(
                target: "monitor",
                scope = %scope.name,
                query = %sig.name,
                prometheus = %cfg.prometheus,
                "query failed: {e}"
            );
        }
        scope.controller.record(i, r);
    }
    scope.controller.evaluate();
}

/// Runs one instant query against Prometheus' HTTP API.
pub async fn query_prometheus(url: &PrometheusUrl, query: &str) -> Result<f64, String> {
    let stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(conn);
    let target = format!(
        "{}/api/v1/query?query={}",
        url.prefix,
        percent_encode(query)
    );
    let req = hyper::Request::get(target)
        .header(hyper::header::HOST, format!("{}:{}", url.host, url.port))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    parse_query_result(&body).map_err(|e| format!("{e} (HTTP {status})"))
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

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            percent_encode("sum(rate(x[1m]))"),
            "sum%28rate%28x%5B1m%5D%29%29"
        );
    }
}
