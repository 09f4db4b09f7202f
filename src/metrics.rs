//! Every metric Floodgate exports, defined and documented in one place.
//!
//! All names carry the `floodgate_` prefix. Labels are bounded: `route` is a
//! configured route name (or `none` when no route matched), `outcome` is
//! `allowed` or a [`RejectReason`](crate::limits::RejectReason) code.

use crate::limits::RejectReason;
use once_cell::sync::Lazy;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The label used for requests that matched no route.
pub const NO_ROUTE_LABEL: &str = "none";
/// The `outcome` label of a request that was proxied.
pub const OUTCOME_ALLOWED: &str = "allowed";

pub struct Metrics {
    pub registry: Registry,
    /// `floodgate_requests_total{route, outcome}`: requests by route and by
    /// outcome (`allowed` or the reject code).
    pub requests_total: IntCounterVec,
    /// `floodgate_request_duration_seconds{route}`: time from the request
    /// header to the end of the response, for every request.
    pub request_duration_seconds: HistogramVec,
    /// `floodgate_ready`: 1 when `/ready` answers 200.
    pub ready: IntGauge,
    /// `floodgate_tokens_total{client, model, kind}`: tokens charged after
    /// settlement (the upstream's usage, else the gateway's own count, else
    /// the estimate); `client` is a configured client id or `other`,
    /// `model` a model with limits, `other`, or `none`; `kind` is `input`,
    /// `output`, `cache_read` or `cache_write`.
    pub tokens_total: IntCounterVec,
    /// `floodgate_shadow_refusals_total{route, outcome}`: requests a
    /// shadow-mode policy would have refused, by the code it would have
    /// answered.
    pub shadow_refusals_total: IntCounterVec,
    /// `floodgate_upstream_connections{host, proxy}`: requests (`proxy` =
    /// `reverse`) or connections and tunnels (`forward`) in flight to each
    /// host; forward destinations no `host_limits` names are summed as
    /// `other`.
    pub upstream_connections: IntGaugeVec,
    /// `floodgate_upstream_connection_limit{host, proxy}`: each host's cap;
    /// 0 = none.
    pub upstream_connection_limit: IntGaugeVec,
    /// `floodgate_backpressure_window{scope}`: the adaptive window;
    /// `scope` is `global` or an upstream name.
    pub backpressure_window: IntGaugeVec,
    /// `floodgate_backpressure_inflight{scope}`: requests holding a slot.
    pub backpressure_inflight: IntGaugeVec,
    /// `floodgate_backpressure_queue_length{scope}`: requests waiting.
    pub backpressure_queue_length: IntGaugeVec,
    /// `floodgate_backpressure_query_value{scope, query}`: each query's
    /// last good reading.
    pub backpressure_query_value: GaugeVec,
    /// `floodgate_backpressure_query_threshold{scope, query, level}`: each
    /// query's `warning` and `emergency` thresholds, for dashboards.
    pub backpressure_query_threshold: GaugeVec,
    /// `floodgate_backpressure_min_window{scope}` and `_max_window{scope}`:
    /// the window's bounds (alerts compare the window with its floor).
    pub backpressure_min_window: IntGaugeVec,
    pub backpressure_max_window: IntGaugeVec,
    /// `floodgate_backpressure_monitor_errors_total{scope, query}`: failed
    /// readings (unreachable, timeout, not one number).
    pub backpressure_monitor_errors_total: IntCounterVec,
    /// `floodgate_config_reloads_total{result}`: `success` or `rejected`.
    pub config_reloads_total: IntCounterVec,
    /// `floodgate_usage_clamped_total`: settlements whose reported usage
    /// was over what a window can count (counted as that maximum).
    pub usage_clamped_total: IntCounter,
    /// `floodgate_admission_safety_net_total`: requests whose admission
    /// ended in neither of its two ways and was settled when its context
    /// was dropped (a bug to report when it moves).
    pub admission_safety_net_total: IntCounter,
    /// `floodgate_fleet_up`: 1 while the fleet's store answers.
    pub fleet_up: IntGauge,
    /// `floodgate_fleet_sync_duration_seconds`: one fleet sync round.
    pub fleet_sync_duration_seconds: Histogram,
    /// `floodgate_fleet_sync_errors_total`: sync rounds that failed.
    pub fleet_sync_errors_total: IntCounter,
    /// `floodgate_fleet_instances`: instances alive at the last heartbeat.
    pub fleet_instances: IntGauge,
    /// `floodgate_fleet_lease_credit{host}`: leases held beyond those in
    /// use, per capped host.
    pub fleet_lease_credit: IntGaugeVec,
    /// `floodgate_log_lines_dropped_total`: log lines (access log included)
    /// dropped because the log writer fell behind.
    pub log_lines_dropped_total: IntCounter,
    /// `floodgate_connections_refused_total{reason}`: client connections
    /// closed before any request: `listener` or `address` (over a cap),
    /// `tls_handshake_timeout`.
    pub connections_refused_total: IntCounterVec,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let requests_total = IntCounterVec::new(
        Opts::new(
            "floodgate_requests_total",
            "Requests by route and outcome (allowed, or the reject code).",
        ),
        &["route", "outcome"],
    )?;
    let request_duration_seconds = HistogramVec::new(
        HistogramOpts::new(
            "floodgate_request_duration_seconds",
            "Time from the request header to the end of the response.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ]),
        &["route"],
    )?;
    let ready = IntGauge::new("floodgate_ready", "1 when /ready would answer 200.")?;
    let tokens_total = IntCounterVec::new(
        Opts::new(
            "floodgate_tokens_total",
            "Tokens charged to clients after settlement, by client (configured id, or other), model (with limits, other, or none) and kind (input, output, cache_read, cache_write).",
        ),
        &["client", "model", "kind"],
    )?;
    let shadow_refusals_total = IntCounterVec::new(
        Opts::new(
            "floodgate_shadow_refusals_total",
            "Requests a shadow-mode policy would have refused, by route and code.",
        ),
        &["route", "outcome"],
    )?;
    let upstream_connections = IntGaugeVec::new(
        Opts::new(
            "floodgate_upstream_connections",
            "Requests or tunnels in flight to each upstream or destination host.",
        ),
        &["host", "proxy"],
    )?;
    let upstream_connection_limit = IntGaugeVec::new(
        Opts::new(
            "floodgate_upstream_connection_limit",
            "Connection cap of each upstream or destination host (0 = none).",
        ),
        &["host", "proxy"],
    )?;
    let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["scope"]);
    let backpressure_window = gauge(
        "floodgate_backpressure_window",
        "The adaptive concurrency window (scope: global or an upstream).",
    )?;
    let backpressure_inflight = gauge(
        "floodgate_backpressure_inflight",
        "Requests holding a slot of the adaptive window.",
    )?;
    let backpressure_queue_length = gauge(
        "floodgate_backpressure_queue_length",
        "Requests waiting for a slot of the adaptive window.",
    )?;
    let backpressure_query_value = GaugeVec::new(
        Opts::new(
            "floodgate_backpressure_query_value",
            "Last good reading of each backpressure query.",
        ),
        &["scope", "query"],
    )?;
    let backpressure_query_threshold = GaugeVec::new(
        Opts::new(
            "floodgate_backpressure_query_threshold",
            "Warning and emergency thresholds of each backpressure query.",
        ),
        &["scope", "query", "level"],
    )?;
    let backpressure_min_window = gauge(
        "floodgate_backpressure_min_window",
        "Floor of the adaptive window.",
    )?;
    let backpressure_max_window = gauge(
        "floodgate_backpressure_max_window",
        "Ceiling of the adaptive window.",
    )?;
    registry.register(Box::new(backpressure_query_threshold.clone()))?;
    registry.register(Box::new(backpressure_min_window.clone()))?;
    registry.register(Box::new(backpressure_max_window.clone()))?;
    let backpressure_monitor_errors_total = IntCounterVec::new(
        Opts::new(
            "floodgate_backpressure_monitor_errors_total",
            "Backpressure query readings that failed.",
        ),
        &["scope", "query"],
    )?;
    let config_reloads_total = IntCounterVec::new(
        Opts::new(
            "floodgate_config_reloads_total",
            "Config reloads by result (success, or rejected: the old config kept serving).",
        ),
        &["result"],
    )?;
    for r in ["success", "rejected"] {
        config_reloads_total.with_label_values(&[r]);
    }
    registry.register(Box::new(config_reloads_total.clone()))?;
    registry.register(Box::new(backpressure_window.clone()))?;
    registry.register(Box::new(backpressure_inflight.clone()))?;
    registry.register(Box::new(backpressure_queue_length.clone()))?;
    registry.register(Box::new(backpressure_query_value.clone()))?;
    registry.register(Box::new(backpressure_monitor_errors_total.clone()))?;
    registry.register(Box::new(upstream_connections.clone()))?;
    registry.register(Box::new(upstream_connection_limit.clone()))?;
    registry.register(Box::new(tokens_total.clone()))?;
    registry.register(Box::new(shadow_refusals_total.clone()))?;
    registry.register(Box::new(requests_total.clone()))?;
    registry.register(Box::new(request_duration_seconds.clone()))?;
    registry.register(Box::new(ready.clone()))?;
    let usage_clamped_total = IntCounter::new(
        "floodgate_usage_clamped_total",
        "Settlements whose reported token usage was over what a window can count.",
    )?;
    registry.register(Box::new(usage_clamped_total.clone()))?;
    let admission_safety_net_total = IntCounter::new(
        "floodgate_admission_safety_net_total",
        "Requests whose admission was settled only when their context was dropped.",
    )?;
    registry.register(Box::new(admission_safety_net_total.clone()))?;
    let fleet_up = IntGauge::new(
        "floodgate_fleet_up",
        "1 while the fleet's Redis answers (fleet mode).",
    )?;
    registry.register(Box::new(fleet_up.clone()))?;
    let fleet_sync_duration_seconds = Histogram::with_opts(
        HistogramOpts::new(
            "floodgate_fleet_sync_duration_seconds",
            "Time of one fleet sync round (quotas, leases, membership, shared overrides).",
        )
        .buckets(vec![
            0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
        ]),
    )?;
    registry.register(Box::new(fleet_sync_duration_seconds.clone()))?;
    let fleet_sync_errors_total = IntCounter::new(
        "floodgate_fleet_sync_errors_total",
        "Fleet sync rounds that failed (the instance was degraded).",
    )?;
    registry.register(Box::new(fleet_sync_errors_total.clone()))?;
    let fleet_instances = IntGauge::new(
        "floodgate_fleet_instances",
        "Fleet instances alive at the last heartbeat.",
    )?;
    registry.register(Box::new(fleet_instances.clone()))?;
    let fleet_lease_credit = IntGaugeVec::new(
        Opts::new(
            "floodgate_fleet_lease_credit",
            "Connection leases held beyond those in use, per capped host (fleet mode).",
        ),
        &["host"],
    )?;
    registry.register(Box::new(fleet_lease_credit.clone()))?;
    let log_lines_dropped_total = IntCounter::new(
        "floodgate_log_lines_dropped_total",
        "Log lines (access log included) dropped because the log writer fell behind.",
    )?;
    registry.register(Box::new(log_lines_dropped_total.clone()))?;
    let connections_refused_total = IntCounterVec::new(
        Opts::new(
            "floodgate_connections_refused_total",
            "Client connections closed before any request, by reason (listener, address, tls_handshake_timeout).",
        ),
        &["reason"],
    )?;
    registry.register(Box::new(connections_refused_total.clone()))?;
    Ok(Metrics {
        registry,
        requests_total,
        request_duration_seconds,
        ready,
        tokens_total,
        shadow_refusals_total,
        upstream_connections,
        upstream_connection_limit,
        backpressure_window,
        backpressure_inflight,
        backpressure_queue_length,
        backpressure_query_value,
        backpressure_query_threshold,
        backpressure_min_window,
        backpressure_max_window,
        backpressure_monitor_errors_total,
        config_reloads_total,
        usage_clamped_total,
        admission_safety_net_total,
        connections_refused_total,
        log_lines_dropped_total,
        fleet_up,
        fleet_sync_duration_seconds,
        fleet_sync_errors_total,
        fleet_instances,
        fleet_lease_credit,
    })
}

static METRICS: Lazy<Metrics> = Lazy::new(|| match build() {
    Ok(m) => m,
    // Names and labels are constants: a failure here is a programming error
    // caught by the first test that touches metrics.
    Err(e) => panic!("metric definitions are invalid: {e}"),
});

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// One route's request metrics, each label set resolved once (on its
/// first use) instead of hashed on every request: the route's entry of
/// `floodgate_requests_total` for each outcome, and its
/// `floodgate_request_duration_seconds`.
#[derive(Debug)]
pub struct RouteMetrics {
    route: std::sync::Arc<str>,
    /// `allowed` first, then each reject reason by its index.
    requests: [std::sync::OnceLock<IntCounter>; 1 + RejectReason::COUNT],
    duration: std::sync::OnceLock<Histogram>,
}

impl RouteMetrics {
    pub fn new(route: std::sync::Arc<str>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(RouteMetrics {
            route,
            requests: std::array::from_fn(|_| std::sync::OnceLock::new()),
            duration: std::sync::OnceLock::new(),
        })
    }

    /// The `route` label.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The counter of requests with this outcome (`None`: allowed).
    pub fn requests(&self, reason: Option<RejectReason>) -> &IntCounter {
        let (i, outcome) = match reason {
            None => (0, OUTCOME_ALLOWED),
            Some(r) => (1 + r.index(), r.as_str()),
        };
        self.requests[i].get_or_init(|| {
            metrics()
                .requests_total
                .with_label_values(&[&*self.route, outcome])
        })
    }

    pub fn duration(&self) -> &Histogram {
        self.duration.get_or_init(|| {
            metrics()
                .request_duration_seconds
                .with_label_values(&[&*self.route])
        })
    }
}

/// The metrics of requests that matched no route.
pub fn no_route_metrics() -> &'static std::sync::Arc<RouteMetrics> {
    static NONE: Lazy<std::sync::Arc<RouteMetrics>> =
        Lazy::new(|| RouteMetrics::new(std::sync::Arc::from(NO_ROUTE_LABEL)));
    &NONE
}

/// Publishes the host counters as gauges (called at scrape time, so the
/// request path never touches a gauge). Labels stay bounded: a backend is
/// its `host:port` (configured), a forward-proxy destination is its key
/// when `host_limits` names it, else `other` (summed).
pub fn export_hosts(
    hosts: &[crate::limits::connections::HostInfo],
    config: &crate::config::Config,
) {
    use crate::limits::connections::Proxy;
    let m = metrics();
    m.upstream_connections.reset();
    m.upstream_connection_limit.reset();
    let configured = |h: &str| {
        config
            .forward_proxy
            .as_ref()
            .is_some_and(|f| f.host_limits.contains_key(h))
    };
    let mut other_active = 0i64;
    for h in hosts {
        let label = match h.proxy {
            Proxy::Forward
                if !configured(&h.host)
                    && h.source != crate::limits::connections::CapSource::Api =>
            {
                other_active += h.active as i64;
                continue;
            }
            _ => h.host.as_str(),
        };
        let l = [label, h.proxy.as_str()];
        m.upstream_connections
            .with_label_values(&l)
            .set(h.active as i64);
        m.upstream_connection_limit
            .with_label_values(&l)
            .set(h.max_connections as i64);
    }
    if let Some(f) = &config.forward_proxy {
        let l = ["other", "forward"];
        m.upstream_connections
            .with_label_values(&l)
            .set(other_active);
        m.upstream_connection_limit
            .with_label_values(&l)
            .set(f.default_max_connections as i64);
    }
}

/// Publishes the adaptive windows as gauges (at scrape time).
pub fn export_backpressure(scopes: &[(String, crate::limits::adaptive::Snapshot)]) {
    let m = metrics();
    m.backpressure_window.reset();
    m.backpressure_inflight.reset();
    m.backpressure_queue_length.reset();
    m.backpressure_query_value.reset();
    m.backpressure_query_threshold.reset();
    m.backpressure_min_window.reset();
    m.backpressure_max_window.reset();
    for (scope, s) in scopes {
        let l = [scope.as_str()];
        m.backpressure_min_window
            .with_label_values(&l)
            .set(s.min_window as i64);
        m.backpressure_max_window
            .with_label_values(&l)
            .set(s.max_window as i64);
        m.backpressure_window
            .with_label_values(&l)
            .set(s.window as i64);
        m.backpressure_inflight
            .with_label_values(&l)
            .set(s.inflight as i64);
        m.backpressure_queue_length
            .with_label_values(&l)
            .set(s.queue_length as i64);
        for q in &s.signals {
            for (level, v) in [("warning", q.warning), ("emergency", q.emergency)] {
                m.backpressure_query_threshold
                    .with_label_values(&[scope.as_str(), q.name.as_str(), level])
                    .set(v);
            }
            if let Some(v) = q.value {
                m.backpressure_query_value
                    .with_label_values(&[scope.as_str(), q.name.as_str()])
                    .set(v);
            }
        }
    }
}

/// Brings `floodgate_log_lines_dropped_total` up to `dropped` (the log
/// writer's own count, read at scrape time).
pub fn record_dropped_log_lines(dropped: u64) {
    let c = &METRICS.log_lines_dropped_total;
    let seen = c.get();
    if dropped > seen {
        c.inc_by(dropped - seen);
    }
}

/// The registry in Prometheus' text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    let families = METRICS.registry.gather();
    if TextEncoder::new().encode(&families, &mut buf).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_every_family() {
        let m = super::metrics();
        m.requests_total.with_label_values(&["r", "allowed"]).inc();
        m.request_duration_seconds
            .with_label_values(&["r"])
            .observe(0.01);
        let text = super::render();
        assert!(text.contains("floodgate_requests_total{outcome=\"allowed\",route=\"r\"}"));
        assert!(text.contains("floodgate_request_duration_seconds_bucket"));
        assert!(text.contains("floodgate_ready"));
    }
}
