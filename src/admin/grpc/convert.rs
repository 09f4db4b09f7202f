//! The service layer's types as protobuf messages.

use super::pb;
use crate::admin::service::{Backpressure, ClientStatsReport, Usage};
use crate::limits::adaptive::{SignalSnapshot, SignalState, Snapshot};
use crate::limits::connections::{CapSource, HostInfo};
use crate::runtime::control::ClientRecord;

impl From<ClientRecord> for pb::ClientConfig {
    fn from(c: ClientRecord) -> Self {
        pb::ClientConfig {
            client_id: c.id,
            rpm: c.rpm,
            tpm: c.tpm,
            enabled: Some(c.enabled),
            source: c.source.to_string(),
        }
    }
}

impl From<Usage> for pb::Usage {
    fn from(u: Usage) -> Self {
        pb::Usage {
            limited: u.limited,
            rpm: u.rpm,
            tpm: u.tpm,
            requests_used: u.requests_used.unwrap_or(0),
            tokens_used: u.tokens_used.unwrap_or(0),
            requests_remaining: u.requests_remaining,
            tokens_remaining: u.tokens_remaining,
            reset_after_ms: u.reset_after_ms.unwrap_or(0),
        }
    }
}

impl From<ClientStatsReport> for pb::GetClientStatsResponse {
    fn from(r: ClientStatsReport) -> Self {
        pb::GetClientStatsResponse {
            client_id: r.id,
            configured: r.configured,
            stats: r.stats.map(|s| pb::ClientCounters {
                requests: s.requests,
                rpm_exceeded: s.refusals.rpm_exceeded,
                tpm_exceeded: s.refusals.tpm_exceeded,
                estimate_too_large: s.refusals.estimate_too_large,
                shadow_refusals: s.shadow_refusals,
                tokens: s.tokens,
            }),
            usage: Some(r.usage.into()),
            models: r.models.into_iter().map(|(m, u)| (m, u.into())).collect(),
        }
    }
}

impl From<HostInfo> for pb::Host {
    fn from(h: HostInfo) -> Self {
        pb::Host {
            host: h.host,
            proxy: h.proxy.as_str().to_string(),
            active: h.active,
            max_connections: h.max_connections,
            source: match h.source {
                CapSource::File => "file",
                CapSource::Api => "api",
            }
            .to_string(),
        }
    }
}

fn signal(s: SignalSnapshot) -> pb::Signal {
    pb::Signal {
        name: s.name,
        query: s.query,
        value: s.value,
        state: match s.state {
            SignalState::Ok => "ok",
            SignalState::Warning => "warning",
            SignalState::Emergency => "emergency",
            SignalState::Stale => "stale",
        }
        .to_string(),
        age_seconds: s.age_seconds,
        warning: s.warning,
        emergency: s.emergency,
        last_error: s.last_error,
    }
}

fn window(name: String, s: Snapshot) -> pb::Window {
    pb::Window {
        name,
        window: s.window,
        inflight: s.inflight,
        min_window: s.min_window,
        max_window: s.max_window,
        queue_length: s.queue_length as u64,
        growing: s.growing,
        signals: s.signals.into_iter().map(signal).collect(),
    }
}

impl From<Backpressure> for pb::GetBackpressureResponse {
    fn from(b: Backpressure) -> Self {
        pb::GetBackpressureResponse {
            enabled: b.enabled,
            gateway: b.gateway.map(|s| window("gateway".into(), s)),
            upstreams: b.upstreams.into_iter().map(|(n, s)| window(n, s)).collect(),
        }
    }
}
