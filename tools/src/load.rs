//! A load generator for Floodgate — and any HTTP/1.1 endpoint.
//!
//! Two shapes:
//! - **closed loop**: N connections, each sending its next request as soon
//!   as the previous answer arrives;
//! - **open loop**: a fixed request rate, spread over up to N connections;
//!   each request's latency is measured from the time it was *meant* to be
//!   sent, so a server that falls behind shows its queueing delay instead of
//!   hiding it (no coordinated omission).
//!
//! Requests can carry many client ids (`X-Client-ID: c<k>`) and token
//! estimates. The report has throughput, latency percentiles, counts by
//! status and by the `error` code of JSON refusals, and a per-second
//! timeline for charts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Pace {
    /// `connections` requests in flight at all times.
    Closed { connections: usize },
    /// `rate` requests per second over at most `connections` in flight.
    Open { rate: f64, connections: usize },
}

/// What to send, how, and for how long.
#[derive(Clone, Debug, Serialize)]
pub struct LoadSpec {
    /// `http://host:port/path?query`
    pub url: String,
    pub pace: Pace,
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Distinct client ids sent in `client_header` (0: none).
    pub clients: u64,
    pub client_header: String,
    /// Token estimates drawn uniformly from this range, in `token_header`.
    pub tokens: Option<(u64, u64)>,
    pub token_header: String,
    /// Extra headers on every request.
    pub headers: Vec<(String, String)>,
    /// Give up on a request after this long (counted as a transport error).
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// Print a progress line to stderr.
    #[serde(skip)]
    pub progress: bool,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl LoadSpec {
    pub fn new(url: &str, pace: Pace, duration: Duration) -> Self {
        LoadSpec {
            url: url.to_string(),
            pace,
            duration,
            clients: 0,
            client_header: "x-client-id".into(),
            tokens: None,
            token_header: "x-token-estimate".into(),
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            progress: false,
        }
    }
}

/// One second of the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TimelinePoint {
    pub second: u64,
    pub requests: u64,
    pub ok: u64,
    /// Answers with a status of 400 and above.
    pub refused: u64,
    pub transport_errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Latency percentiles, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// The outcome of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    pub url: String,
    pub requests: u64,
    pub seconds: f64,
    pub throughput: f64,
    /// Responses with status < 400, per second.
    pub goodput: f64,
    /// Latency of every answer, refusals included.
    pub latency: Latency,
    /// Latency of the answers with a status below 400.
    pub latency_ok: Latency,
    pub by_status: BTreeMap<u16, u64>,
    pub by_error: BTreeMap<String, u64>,
    pub transport_errors: u64,
    pub timeline: Vec<TimelinePoint>,
}

#[derive(Clone, Copy)]
struct Sample {
    /// Milliseconds from the start of the run to the answer.
    at_ms: u32,
    latency_us: u32,
    /// 0: transport error.
    status: u16,
}

struct Target {
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("{url}: bad port"))?),
        None => (authority, 80),
    };
    Ok(Target {
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(t: &Target) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// Sends one request; returns the status and, for a JSON refusal, its
/// `error` code. `None`: transport error (the connection is dropped).
async fn send(
    sender: &mut Option<Sender>,
    t: &Target,
    spec: &LoadSpec,
    seq: u64,
) -> Option<(u16, Option<String>)> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(t).await;
    }
    let s = sender.as_mut()?;
    s.ready().await.ok()?;
    let mut req = hyper::Request::get(t.path.as_str())
        .header(hyper::header::HOST, format!("{}:{}", t.host, t.port));
    if spec.clients > 0 {
        req = req.header(
            spec.client_header.as_str(),
            format!("c{}", seq % spec.clients),
        );
    }
    if let Some((lo, hi)) = spec.tokens {
        req = req.header(
            spec.token_header.as_str(),
            fastrand::u64(lo..=hi.max(lo)).to_string(),
        );
    }
    for (k, v) in &spec.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Empty::new()).ok()?;
    let resp = match s.send_request(req).await {
        Ok(r) => r,
        Err(_) => {
            *sender = None;
            return None;
        }
    };
    let status = resp.status().as_u16();
    let body = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            *sender = None;
            return None;
        }
    };
    let code = (status >= 400)
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten()
        .and_then(|v| v["error"].as_str().map(str::to_string));
    Some((status, code))
}

/// Runs the load and reports.
pub async fn run(spec: LoadSpec) -> Result<LoadReport, String> {
    let target = Arc::new(parse_url(&spec.url)?);
    let spec = Arc::new(spec);
    let start = Instant::now();
    let end = start + spec.duration;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let errors: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Default::default();
    let (workers, rate) = match spec.pace {
        Pace::Closed { connections } => (connections.max(1), None),
        Pace::Open { rate, connections } => (connections.max(1), Some(rate.max(0.001))),
    };
    let stop_progress = Arc::new(AtomicBool::new(false));
    let progress = spec.progress.then(|| {
        let (done, stop, total) = (done.clone(), stop_progress.clone(), spec.duration);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let el = start.elapsed().min(total);
                let frac = el.as_secs_f64() / total.as_secs_f64().max(1e-9);
                let bar: String = (0..30)
                    .map(|i| if (i as f64) < frac * 30.0 { '=' } else { ' ' })
                    .collect();
                let n = done.load(Ordering::Relaxed);
                eprint!(
                    "\r[{bar}] {:>5.1}s/{:.0}s {n:>9} requests {:>9.0} req/s",
                    el.as_secs_f64(),
                    total.as_secs_f64(),
                    n as f64 / el.as_secs_f64().max(1e-9)
                );
            }
            eprintln!();
        })
    });
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (target, spec, next, done, errors) = (
            target.clone(),
            spec.clone(),
            next.clone(),
            done.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut sender = None;
            let mut samples = Vec::new();
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                // The time this request is meant to go out.
                let intended = match rate {
                    None => Instant::now(),
                    Some(r) => start + Duration::from_secs_f64(seq as f64 / r),
                };
                if intended >= end {
                    break;
                }
                if let Some(wait) = intended.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
                let r = tokio::time::timeout(spec.timeout, send(&mut sender, &target, &spec, seq))
                    .await;
                let now = Instant::now();
                let (status, code) = match r {
                    Ok(Some(x)) => x,
                    Ok(None) => (0, None),
                    Err(_) => {
                        sender = None;
                        (0, None)
                    }
                };
                if let Some(c) = code {
                    if let Ok(mut e) = errors.lock() {
                        *e.entry(c).or_default() += 1;
                    }
                }
                samples.push(Sample {
                    at_ms: now.duration_since(start).as_millis() as u32,
                    latency_us: now
                        .duration_since(intended)
                        .as_micros()
                        .min(u32::MAX as u128) as u32,
                    status,
                });
                done.fetch_add(1, Ordering::Relaxed);
                if rate.is_none() && now >= end {
                    break;
                }
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.map_err(|e| e.to_string())?);
    }
    stop_progress.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let by_error = errors.lock().map(|e| e.clone()).unwrap_or_default();
    Ok(summarize(&spec.url, samples, seconds, by_error))
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn summarize(
    url: &str,
    samples: Vec<Sample>,
    seconds: f64,
    by_error: BTreeMap<String, u64>,
) -> LoadReport {
    let mut by_status = BTreeMap::new();
    let mut transport_errors = 0;
    let mut good = 0;
    for s in &samples {
        if s.status == 0 {
            transport_errors += 1;
        } else {
            *by_status.entry(s.status).or_default() += 1;
            if s.status < 400 {
                good += 1;
            }
        }
    }
    let percentiles = |keep: &dyn Fn(&Sample) -> bool| {
        let mut lat: Vec<u32> = samples
            .iter()
            .filter(|s| keep(s))
            .map(|s| s.latency_us)
            .collect();
        lat.sort_unstable();
        Latency {
            p50_ms: pct(&lat, 0.5),
            p90_ms: pct(&lat, 0.9),
            p99_ms: pct(&lat, 0.99),
            p999_ms: pct(&lat, 0.999),
            max_ms: lat.last().map_or(0.0, |v| *v as f64 / 1000.0),
        }
    };
    let latency = percentiles(&|s| s.status != 0);
    let latency_ok = percentiles(&|s| s.status != 0 && s.status < 400);
    // Whole seconds; the last moments of the run join the last second
    // rather than make a nearly empty bucket.
    let secs = seconds.floor() as usize;
    let mut buckets: Vec<(TimelinePoint, Vec<u32>)> = (0..secs.max(1))
        .map(|i| {
            (
                TimelinePoint {
                    second: i as u64,
                    ..Default::default()
                },
                Vec::new(),
            )
        })
        .collect();
    for s in &samples {
        let i = ((s.at_ms / 1000) as usize).min(buckets.len() - 1);
        let (p, l) = &mut buckets[i];
        p.requests += 1;
        match s.status {
            0 => p.transport_errors += 1,
            400.. => p.refused += 1,
            _ => p.ok += 1,
        }
        if s.status != 0 {
            l.push(s.latency_us);
        }
    }
    let timeline = buckets
        .into_iter()
        .map(|(mut p, mut l)| {
            l.sort_unstable();
            p.p50_ms = pct(&l, 0.5);
            p.p99_ms = pct(&l, 0.99);
            p
        })
        .collect();
    let n = samples.len() as u64;
    LoadReport {
        url: url.to_string(),
        requests: n,
        seconds,
        throughput: n as f64 / seconds.max(1e-9),
        goodput: good as f64 / seconds.max(1e-9),
        latency,
        latency_ok,
        by_status,
        by_error,
        transport_errors,
        timeline,
    }
}

impl LoadReport {
    /// The human-readable summary table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("target      {}\n", self.url));
        s.push_str(&format!(
            "requests    {} in {:.1}s: {:.0} req/s, {:.0} good/s\n",
            self.requests, self.seconds, self.throughput, self.goodput
        ));
        for (name, l) in [("latency", &self.latency), ("  (< 400)", &self.latency_ok)] {
            s.push_str(&format!(
                "{name:<11} p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms\n",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            ));
        }
        let st: Vec<String> = self
            .by_status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        s.push_str(&format!("by status   {}\n", st.join("   ")));
        if !self.by_error.is_empty() {
            let er: Vec<String> = self
                .by_error
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            s.push_str(&format!("by error    {}\n", er.join("   ")));
        }
        if self.transport_errors > 0 {
            s.push_str(&format!(
                "transport   {} errors (connect, reset, timeout)\n",
                self.transport_errors
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/a?b=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/a?b=1")
        );
        let t = parse_url("http://example.test").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        assert!(parse_url("https://x").is_err());
    }

    #[test]
    fn summary_counts_and_percentiles() {
        let samples: Vec<Sample> = (0..1000)
            .map(|i| Sample {
                at_ms: i * 2,
                latency_us: (i + 1) * 1000,
                status: if i % 10 == 0 { 429 } else { 200 },
            })
            .chain(std::iter::once(Sample {
                at_ms: 5,
                latency_us: 1,
                status: 0,
            }))
            .collect();
        let r = summarize("u", samples, 2.0, BTreeMap::new());
        assert_eq!(r.requests, 1001);
        assert_eq!(r.by_status[&200], 900);
        assert_eq!(r.by_status[&429], 100);
        assert_eq!(r.transport_errors, 1);
        assert_eq!(r.latency.p50_ms, 500.0);
        assert_eq!(r.latency.p99_ms, 990.0);
        assert_eq!(r.latency.max_ms, 1000.0);
        assert_eq!(r.timeline.len(), 2);
        assert_eq!(r.timeline[0].requests, 501);
        assert!((r.goodput - 450.0).abs() < 1e-9);
    }
}
