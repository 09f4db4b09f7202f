//! Per-request state, carried from `request_filter` to `logging`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::admission::{Admission, Outcome};
use super::headers::Origin;
use super::usage::UsageScanner;
use crate::limits::clients::Privileges;
use crate::limits::rate::QuotaState;
use crate::limits::RejectReason;
use crate::runtime::upstream::Upstream;
use crate::runtime::Runtime;

/// Everything one request accumulates on its way through the phases.
pub struct RequestCtx {
    /// When the request header was read.
    pub started: Instant,
    /// The configuration this request sees from start to end.
    pub runtime: Option<Arc<Runtime>>,
    pub request_id: String,
    /// Name of the matched route.
    pub route: Option<Arc<str>>,
    /// The matched route's request metrics.
    pub route_metrics: Option<Arc<crate::metrics::RouteMetrics>>,
    /// The upstream serving the matched route.
    pub upstream: Option<Arc<Upstream>>,
    /// The backend of the current attempt.
    pub backend: Option<SocketAddr>,
    /// Backends that refused a connection for this request.
    pub failed_backends: Vec<SocketAddr>,
    /// Set when the gateway answered the request itself.
    pub reject: Option<RejectReason>,
    /// Who sent the request: peer, whether it is a trusted proxy, the
    /// client behind it.
    pub origin: Origin,
    /// The resolved client id, when client limits apply.
    pub client_id: Option<String>,
    /// The client named itself with one of its Floodgate API keys (which
    /// then never goes upstream).
    pub by_api_key: bool,
    /// What the client may ask of the adaptive windows.
    pub privileges: Privileges,
    /// Everything the request took (quota charge, permits, host slot).
    pub admission: Admission,
    /// The client's quotas after the decision, for the response headers.
    pub quota_state: Option<QuotaState>,
    /// What a shadow-mode policy would have answered.
    pub shadow: Option<RejectReason>,
    /// Reads actual token usage from the response body.
    pub usage: Option<UsageScanner>,
    /// Actual token usage from the configured response header.
    pub reported_tokens: Option<u64>,
    /// The upstream answered 5xx.
    pub upstream_failed: bool,
    /// The route's body limit, and the body bytes seen so far.
    pub max_body_size: Option<usize>,
    pub body_bytes: usize,
    /// When a body still streaming from the client is too late
    /// (`server.body_timeout` after the request was admitted).
    pub body_deadline: Option<std::time::Instant>,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            started: Instant::now(),
            runtime: None,
            request_id: String::new(),
            route: None,
            route_metrics: None,
            upstream: None,
            backend: None,
            failed_backends: Vec::new(),
            reject: None,
            origin: Origin::default(),
            client_id: None,
            by_api_key: false,
            privileges: Privileges::default(),
            admission: Admission::default(),
            quota_state: None,
            shadow: None,
            usage: None,
            reported_tokens: None,
            upstream_failed: false,
            max_body_size: None,
            body_bytes: 0,
            body_deadline: None,
        }
    }

    /// The usage the upstream reported so far: its header, else the body.
    pub fn reported_usage(&self) -> Option<u64> {
        self.reported_tokens
            .or_else(|| self.usage.as_ref().and_then(UsageScanner::total))
    }

    /// The upstream response has ended (with or without a body): settle
    /// now, not when Pingora drops the context after the client has its
    /// last byte, so the client's next request sees the settled state.
    pub fn upstream_response_ended(&mut self) {
        let outcome = if self.upstream_failed {
            Outcome::UpstreamFailed
        } else {
            Outcome::Answered {
                usage: self.reported_usage(),
            }
        };
        self.settle(outcome);
    }

    /// Ends the admission with `outcome` and counts the tokens it settled.
    pub fn settle(&mut self, outcome: Outcome) {
        let Some(settled) = self.admission.finish(outcome) else {
            return;
        };
        let m = crate::metrics::metrics();
        if settled.clamped {
            m.usage_clamped_total.inc();
        }
        if let (Some(rt), Some(id)) = (&self.runtime, &self.client_id) {
            m.tokens_total
                .with_label_values(&[rt.clients.label(id)])
                .inc_by(settled.tokens);
        }
    }

    /// The metric `outcome` label: `allowed` or the reject code.
    pub fn outcome(&self) -> &'static str {
        self.reject
            .map_or(crate::metrics::OUTCOME_ALLOWED, RejectReason::as_str)
    }

    /// The metric `route` label.
    pub fn route_label(&self) -> &str {
        self.route
            .as_deref()
            .unwrap_or(crate::metrics::NO_ROUTE_LABEL)
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
