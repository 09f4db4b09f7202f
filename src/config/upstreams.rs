//! `[[upstreams]]`: pools of backends, their TLS, timeouts and caps.

use std::path::Path;

use super::diag::Diagnostics;
use super::schema::*;
use super::values::*;
use super::*;

pub(super) fn validate_upstream(
    u: RawUpstream,
    p: &KeyPath,
    base: &Path,
    d: &mut Diagnostics<'_>,
) -> Option<UpstreamConfig> {
    let name = required(u.name, &p.key("name"), d).and_then(|n| name_ok(n, &p.key("name"), d));
    let backends = match u.backends {
        None => {
            d.error(
                &p.key("backends"),
                "missing: list at least one \"host:port\"",
            );
            None
        }
        Some(b) if b.is_empty() => {
            d.error(&p.key("backends"), "must list at least one \"host:port\"");
            None
        }
        Some(b) => {
            let v: Vec<_> = b
                .iter()
                .enumerate()
                .filter_map(|(i, a)| socket_addr(a, &p.key("backends").index(i), d))
                .collect();
            (v.len() == b.len()).then_some(v)
        }
    };
    let tls_on = u.tls.unwrap_or(false);
    if !tls_on {
        for (k, set) in [
            ("sni", u.sni.is_some()),
            ("ca_file", u.ca_file.is_some()),
            ("verify_cert", u.verify_cert.is_some()),
        ] {
            if set {
                d.error(&p.key(k), "only applies with tls = true");
            }
        }
    }
    let tls = if tls_on {
        let ca_file = match u.ca_file {
            None => Some(None),
            Some(f) => existing_file(&f, base, &p.key("ca_file"), d).map(Some),
        };
        let sni = match u.sni {
            Some(s) => s,
            None => backends
                .as_ref()
                .and_then(|b| b.first())
                .map(|a| a.ip().to_string())
                .unwrap_or_default(),
        };
        ca_file.map(|ca_file| {
            Some(UpstreamTls {
                sni,
                ca_file,
                verify_cert: u.verify_cert.unwrap_or(true),
            })
        })
    } else {
        Some(None)
    };
    let connect_timeout = duration_or(u.connect_timeout, "5s", &p.key("connect_timeout"), d);
    let read_timeout = duration_or(u.read_timeout, "60s", &p.key("read_timeout"), d);
    let write_timeout = duration_or(u.write_timeout, "60s", &p.key("write_timeout"), d);
    let idle_timeout = duration_or(u.idle_timeout, "60s", &p.key("idle_timeout"), d);
    let health_check_interval = duration_or(
        u.health_check_interval,
        "1s",
        &p.key("health_check_interval"),
        d,
    );
    let retries = match u.retries {
        None => Some(
            backends
                .as_ref()
                .map_or(0, |b| b.len().saturating_sub(1))
                .min(3),
        ),
        Some(n) if n >= 0 => Some(n as usize),
        Some(_) => {
            d.error(&p.key("retries"), "must be >= 0");
            None
        }
    };
    let max_connections = match u.max_connections {
        None => Some(0),
        Some(n) if n >= 0 => Some(n as u64),
        Some(_) => {
            d.error(&p.key("max_connections"), "must be >= 0");
            None
        }
    };
    let backpressure = match u.backpressure {
        None => Some(None),
        Some(b) => {
            super::backpressure::validate_backpressure(b, &p.key("backpressure"), base, true, d)
        }
    };
    let mut request_headers = HeaderRules::default();
    let mut headers_ok = true;
    if let Some(h) = u.request_headers {
        let hp = p.key("request_headers");
        for (name, value) in h.set {
            let kp = hp.key("set").key(&name);
            let Ok(n) = http::HeaderName::from_bytes(name.as_bytes()) else {
                d.error(&kp, format!("{name:?} is not a valid header name"));
                headers_ok = false;
                continue;
            };
            let t = SecretTemplate::new(value);
            if let Err(e) = t.vars() {
                d.error(&kp, e);
                headers_ok = false;
                continue;
            }
            request_headers.set.push((n, t));
        }
        for (i, name) in h.remove.iter().enumerate() {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => request_headers.remove.push(n),
                Err(_) => {
                    d.error(
                        &hp.key("remove").index(i),
                        format!("{name:?} is not a valid header name"),
                    );
                    headers_ok = false;
                }
            }
        }
    }
    if !headers_ok {
        return None;
    }
    Some(UpstreamConfig {
        request_headers,
        backpressure: backpressure?,
        max_connections: max_connections?,
        name: name?,
        backends: backends?,
        tls: tls?,
        connect_timeout: connect_timeout?,
        read_timeout: read_timeout?,
        write_timeout: write_timeout?,
        idle_timeout: idle_timeout?,
        health_check_interval: health_check_interval?,
        retries: retries?,
    })
}
