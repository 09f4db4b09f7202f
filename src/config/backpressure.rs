//! `[backpressure]` and `[upstreams.backpressure]`: adaptive windows and
//! the Prometheus queries that move them.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::diag::Diagnostics;
use super::schema::*;
use super::values::*;
use super::*;

/// `[backpressure]`; `enabled` defaults to false for the global table (as
/// the contract says) and to true for an upstream's own table.
pub(super) fn validate_backpressure(
    b: RawBackpressure,
    p: &KeyPath,
    base: &Path,
    default_enabled: bool,
    d: &mut Diagnostics<'_>,
) -> Option<Option<BackpressureConfig>> {
    use crate::limits::adaptive::{AdaptiveConfig, OnStale, SignalConfig};
    let prometheus = prometheus_endpoint(&b, p, base, d);
    let interval = duration_or(b.interval, "5s", &p.key("interval"), d);
    if interval.is_some_and(|i| i < Duration::from_millis(100)) {
        d.error(&p.key("interval"), "must be at least 100ms");
    }
    let query_timeout = match (b.query_timeout, interval) {
        (Some(t), _) => duration_or(Some(t), "1s", &p.key("query_timeout"), d),
        (None, Some(i)) => Some(i / 2),
        (None, None) => None,
    };
    if let (Some(t), Some(i)) = (query_timeout, interval) {
        if t >= i {
            d.error(&p.key("query_timeout"), "must be shorter than interval");
        }
    }
    let stale_after = match (b.stale_after, interval) {
        (Some(t), _) => duration_or(Some(t), "15s", &p.key("stale_after"), d),
        (None, Some(i)) => Some(i * 3),
        (None, None) => None,
    };
    let count = |v: Option<i64>, default: u64, key: &str, d: &mut Diagnostics<'_>| match v {
        None => Some(default),
        Some(n) if n >= 1 => Some(n as u64),
        Some(_) => {
            d.error(&p.key(key), "must be >= 1");
            None
        }
    };
    let min_window = count(b.min_window, 10, "min_window", d);
    let max_window = count(b.max_window, 1000, "max_window", d);
    if let (Some(lo), Some(hi)) = (min_window, max_window) {
        if lo > hi {
            d.error(&p.key("min_window"), "must be <= max_window");
        }
    }
    let initial_window = match b.initial_window {
        None => max_window,
        Some(n) => {
            let v = count(Some(n), 1, "initial_window", d);
            if let (Some(v), Some(lo), Some(hi)) = (v, min_window, max_window) {
                if v < lo || v > hi {
                    d.error(
                        &p.key("initial_window"),
                        "must be within [min_window, max_window]",
                    );
                }
            }
            v
        }
    };
    let increase = match b.increase {
        None => Some(1.0),
        Some(x) if x.is_finite() && x >= 0.001 => Some(x),
        Some(_) => {
            d.error(&p.key("increase"), "must be a number >= 0.001");
            None
        }
    };
    let backoff = match b.backoff {
        None => Some(0.5),
        Some(x) if x > 0.0 && x < 1.0 => Some(x),
        Some(_) => {
            d.error(&p.key("backoff"), "must be between 0 and 1 (exclusive)");
            None
        }
    };
    let critical_reserve = match b.critical_reserve {
        None => Some(0.0),
        Some(x) if (0.0..1.0).contains(&x) => Some(x),
        Some(_) => {
            d.error(&p.key("critical_reserve"), "must be in [0, 1)");
            None
        }
    };
    let on_stale = match b.on_stale.as_deref() {
        None | Some("hold") => Some(OnStale::Hold),
        Some("open") => Some(OnStale::Open),
        Some("close") => Some(OnStale::Close),
        Some(o) => {
            d.error(
                &p.key("on_stale"),
                format!("{o:?}: must be \"hold\", \"open\" or \"close\""),
            );
            None
        }
    };
    let queue_timeout = duration_or(b.queue_timeout, "0s", &p.key("queue_timeout"), d);
    let max_queue = match b.max_queue {
        None => Some(if queue_timeout.is_some_and(|q| !q.is_zero()) {
            100
        } else {
            0
        }),
        Some(n) if n >= 0 => Some(n as usize),
        Some(_) => {
            d.error(&p.key("max_queue"), "must be >= 0");
            None
        }
    };
    let jitter = duration_or(b.jitter, "0s", &p.key("jitter"), d);
    let mut signals = Vec::new();
    let mut names = HashSet::new();
    for (i, q) in b.queries.into_iter().enumerate() {
        let qp = p.key("queries").index(i);
        let name = q.name.unwrap_or_else(|| format!("q{i}"));
        if !names.insert(name.clone()) {
            d.error(&qp.key("name"), format!("duplicate query name {name:?}"));
        }
        let query = required(q.query, &qp.key("query"), d);
        let warning = required(q.warning, &qp.key("warning"), d);
        let emergency = required(q.emergency, &qp.key("emergency"), d);
        if let (Some(w), Some(e)) = (warning, emergency) {
            if !(w.is_finite() && e.is_finite()) || w > e {
                d.error(&qp.key("warning"), "must be a number <= emergency");
            }
        }
        if let (Some(query), Some(warning), Some(emergency)) = (query, warning, emergency) {
            signals.push(SignalConfig {
                name,
                query,
                warning,
                emergency,
            });
        }
    }
    if !b.enabled.unwrap_or(default_enabled) {
        return Some(None);
    }
    Some(Some(BackpressureConfig {
        prometheus: prometheus?,
        interval: interval?,
        query_timeout: query_timeout?,
        adaptive: AdaptiveConfig {
            min_window: min_window?,
            max_window: max_window?,
            initial_window: initial_window?,
            increase: increase?,
            backoff: backoff?,
            stale_after: stale_after?,
            on_stale: on_stale?,
            queue_timeout: queue_timeout?,
            max_queue: max_queue?,
            critical_reserve: critical_reserve?,
            jitter: jitter?,
            signals,
        },
    }))
}

/// Where Prometheus' HTTP API is and how to authenticate to it.
fn prometheus_endpoint(
    b: &RawBackpressure,
    p: &KeyPath,
    base: &Path,
    d: &mut Diagnostics<'_>,
) -> Option<PrometheusEndpoint> {
    let raw = b
        .prometheus_url
        .as_deref()
        .unwrap_or("http://127.0.0.1:9090");
    let url = match url::Url::parse(raw) {
        Ok(u) if !matches!(u.scheme(), "http" | "https") => {
            d.error(
                &p.key("prometheus_url"),
                format!("{raw:?}: the scheme must be http or https"),
            );
            None
        }
        Ok(u) if u.host_str().is_none_or(str::is_empty) => {
            d.error(&p.key("prometheus_url"), format!("{raw:?} has no host"));
            None
        }
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            d.error(
                &p.key("prometheus_url"),
                "credentials do not belong in the URL (it is logged): use \
                 prometheus_username with prometheus_password_env, or \
                 prometheus_bearer_token_env",
            );
            None
        }
        Ok(u) if u.query().is_some() || u.fragment().is_some() => {
            d.error(
                &p.key("prometheus_url"),
                format!("{raw:?}: a query or fragment has no place here"),
            );
            None
        }
        Ok(mut u) => {
            // `api/v1/query` is joined onto it: the prefix must end in '/'.
            if !u.path().ends_with('/') {
                let path = format!("{}/", u.path());
                u.set_path(&path);
            }
            Some(u)
        }
        Err(e) => {
            d.error(
                &p.key("prometheus_url"),
                format!("{raw:?} is not a URL: {e}"),
            );
            None
        }
    };
    let env_name = |v: &Option<String>, key: &str, d: &mut Diagnostics<'_>| match v {
        Some(n) if n.is_empty() || n.contains('=') || n.contains('\0') => {
            d.error(&p.key(key), "must be the name of an environment variable");
            None
        }
        other => Some(other.clone()),
    };
    let bearer = env_name(
        &b.prometheus_bearer_token_env,
        "prometheus_bearer_token_env",
        d,
    );
    let password = env_name(&b.prometheus_password_env, "prometheus_password_env", d);
    let auth = match (bearer, b.prometheus_username.clone(), password) {
        (Some(None), None, Some(None)) => Some(None),
        (Some(Some(env)), None, Some(None)) => {
            Some(Some(PrometheusAuth::Bearer { token_env: env }))
        }
        (Some(None), Some(username), Some(Some(password_env))) => {
            Some(Some(PrometheusAuth::Basic {
                username,
                password_env,
            }))
        }
        (Some(Some(_)), Some(_), _) | (Some(Some(_)), _, Some(Some(_))) => {
            d.error(
                &p.key("prometheus_bearer_token_env"),
                "use either a bearer token or a username and password, not both",
            );
            None
        }
        (Some(None), Some(_), Some(None)) => {
            d.error(
                &p.key("prometheus_password_env"),
                "prometheus_username needs prometheus_password_env",
            );
            None
        }
        (Some(None), None, Some(Some(_))) => {
            d.error(
                &p.key("prometheus_username"),
                "prometheus_password_env needs prometheus_username",
            );
            None
        }
        _ => None,
    };
    let mut headers = Vec::new();
    let mut bad_header = false;
    for (k, v) in &b.prometheus_headers {
        let hp = p.key("prometheus_headers").key(k);
        match (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            (Err(_), _) => {
                d.error(&hp, format!("{k:?} is not a valid header name"));
                bad_header = true;
            }
            (_, Err(_)) => {
                d.error(&hp, "is not a valid header value");
                bad_header = true;
            }
        }
    }
    let ca_file = match &b.prometheus_ca_file {
        None => Some(None),
        Some(f) => existing_file(f, base, &p.key("prometheus_ca_file"), d).map(Some),
    };
    if bad_header {
        return None;
    }
    Some(PrometheusEndpoint {
        url: url?,
        auth: auth?,
        headers,
        ca_file: ca_file?,
    })
}
