//! Per-request state, carried from `request_filter` to `logging`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::runtime::Runtime;
use super::upstream::Upstream;
use crate::limits::RejectReason;

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
