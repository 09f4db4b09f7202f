//! Per-request state, carried from `request_filter` to `logging`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::usage::UsageScanner;
use crate::limits::adaptive::AdaptivePermit;
use crate::limits::clients::Charge;
use crate::limits::connections::HostSlot;
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
    /// The upstream serving the matched route.
    pub upstream: Option<Arc<Upstream>>,
    /// The backend of the current attempt.
    pub backend: Option<SocketAddr>,
    /// Backends that refused a connection for this request.
    pub failed_backends: Vec<SocketAddr>,
    /// Set when the gateway answered the request itself.
    pub reject: Option<RejectReason>,
    /// The resolved client id, when client limits apply.
    pub client_id: Option<String>,
    /// What admitting the request charged to its client.
    pub charge: Option<Charge>,
    /// The client's quotas after the decision, for the response headers.
    pub quota_state: Option<QuotaState>,
    /// What a shadow-mode policy would have answered.
    pub shadow: Option<RejectReason>,
    /// Reads actual token usage from the response body.
    pub usage: Option<UsageScanner>,
    /// Actual token usage from the configured response header.
    pub reported_tokens: Option<u64>,
    /// The upstream answered 5xx: the token charge is refunded.
    pub upstream_failed: bool,
    /// The place this request holds under its backend host's cap.
    pub slot: Option<HostSlot>,
    /// Its places in the adaptive windows (gateway-wide, upstream).
    pub permits: Vec<AdaptivePermit>,
    /// The route's body limit, and the body bytes seen so far.
    pub max_body_size: Option<usize>,
    pub body_bytes: usize,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            started: Instant::now(),
            runtime: None,
            request_id: String::new(),
            route: None,
            upstream: None,
            backend: None,
            failed_backends: Vec::new(),
            reject: None,
            client_id: None,
            charge: None,
            quota_state: None,
            shadow: None,
            usage: None,
            reported_tokens: None,
            upstream_failed: false,
            slot: None,
            permits: Vec::new(),
            max_body_size: None,
            body_bytes: 0,
        }
    }

    /// The upstream response has ended: free the host slot and settle the
    /// tokens now, not when Pingora drops the context after the client has
    /// its last byte, so the client's next request sees the settled state.
    pub fn upstream_done(&mut self) {
        self.slot = None;
        // A completed request may widen the windows; a failed one may not.
        let failed = self.upstream_failed;
        for p in self.permits.drain(..) {
            if !failed {
                p.complete();
            }
        }
        self.settle_tokens();
    }

    /// Settles the token charge once the upstream response has ended: the
    /// actual count when the upstream reported one, else the estimate; a
    /// failed upstream request refunds it.
    pub fn settle_tokens(&mut self) {
        let Some(charge) = self.charge.take() else {
            return;
        };
        if self.upstream_failed {
            drop(charge); // refunds the tokens
            return;
        }
        let actual = self
            .reported_tokens
            .or_else(|| self.usage.as_ref().and_then(UsageScanner::total));
        let tokens = actual.unwrap_or_else(|| charge.tokens());
        if let (Some(rt), Some(id)) = (&self.runtime, &self.client_id) {
            crate::metrics::metrics()
                .tokens_total
                .with_label_values(&[rt.clients.label(id)])
                .inc_by(tokens);
        }
        charge.settle(actual);
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
