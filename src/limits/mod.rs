//! Limiters and the vocabulary of their decisions. A leaf: nothing here
//! imports another layer of the gateway, and every limiter is testable
//! without a socket (time comes from an injectable [`clock::Clock`]).
//!
//! Every refusal the gateway writes itself is one [`Refusal`] with one
//! [`RejectReason`]; [`RejectReason::as_str`] is at once the `error` code in
//! the JSON body and the `outcome` label of `floodgate_requests_total`: one
//! name, one place.

pub mod adaptive;
pub mod clients;
pub mod clock;
pub mod connections;
pub mod destinations;
pub mod fleet;
pub mod listeners;
pub mod rate;

use http::StatusCode;

/// Why the gateway answered a request itself instead of proxying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// A malformed request the gateway refuses itself.
    BadRequest,
    /// The client id header is required and absent.
    MissingHeader,
    /// A header value the gateway needs is malformed.
    InvalidHeader,
    /// An API key was presented and is unknown.
    InvalidApiKey,
    /// No route matches the request's host and path.
    NoRoute,
    /// Forward proxy: the destination policy refuses the host or port.
    DestinationDenied,
    /// The token estimate can never fit the client's TPM.
    EstimateTooLarge,
    /// The request body is over the route's limit.
    BodyTooLarge,
    /// The request header block is over `server.max_header_size`.
    HeadersTooLarge,
    /// The client did not send its whole header within `server.header_timeout`.
    RequestTimeout,
    /// A method this listener does not serve (CONNECT on the reverse proxy).
    MethodNotAllowed,
    /// A transfer coding of the request's body other than `chunked`, which
    /// the gateway cannot decode.
    NotImplemented,
    /// The client is over its requests per window.
    RpmExceeded,
    /// The client is over its tokens per window.
    TpmExceeded,
    /// The client has `max_concurrent` requests in flight already.
    ConcurrencyExceeded,
    /// The adaptive concurrency window is full.
    Backpressure,
    /// The upstream host is at its connection cap.
    ConnectionLimit,
    /// The upstream failed or is unreachable.
    UpstreamError,
    /// The upstream did not answer in time.
    UpstreamTimeout,
}

impl RejectReason {
    /// How many reasons there are (each one's index is below it).
    pub const COUNT: usize = RejectReason::UpstreamTimeout as usize + 1;

    /// Its place among the reasons (for arrays indexed by reason).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The `error` code of the JSON body and the metric `outcome` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadRequest => "bad_request",
            RejectReason::MissingHeader => "missing_header",
            RejectReason::InvalidHeader => "invalid_header",
            RejectReason::InvalidApiKey => "invalid_api_key",
            RejectReason::NoRoute => "no_route",
            RejectReason::DestinationDenied => "destination_denied",
            RejectReason::EstimateTooLarge => "estimate_too_large",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::HeadersTooLarge => "headers_too_large",
            RejectReason::RequestTimeout => "request_timeout",
            RejectReason::MethodNotAllowed => "method_not_allowed",
            RejectReason::NotImplemented => "not_implemented",
            RejectReason::RpmExceeded => "rpm_exceeded",
            RejectReason::TpmExceeded => "tpm_exceeded",
            RejectReason::ConcurrencyExceeded => "concurrency_exceeded",
            RejectReason::Backpressure => "backpressure",
            RejectReason::ConnectionLimit => "connection_limit",
            RejectReason::UpstreamError => "upstream_error",
            RejectReason::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// The HTTP status this refusal is answered with.
    pub const fn status(self) -> StatusCode {
        match self {
            RejectReason::BadRequest
            | RejectReason::MissingHeader
            | RejectReason::InvalidHeader => StatusCode::BAD_REQUEST,
            RejectReason::InvalidApiKey => StatusCode::UNAUTHORIZED,
            RejectReason::DestinationDenied => StatusCode::FORBIDDEN,
            RejectReason::NoRoute => StatusCode::NOT_FOUND,
            RejectReason::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            RejectReason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RejectReason::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            RejectReason::EstimateTooLarge | RejectReason::BodyTooLarge => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            RejectReason::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RejectReason::RpmExceeded
            | RejectReason::TpmExceeded
            | RejectReason::ConcurrencyExceeded => StatusCode::TOO_MANY_REQUESTS,
            RejectReason::Backpressure | RejectReason::ConnectionLimit => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RejectReason::UpstreamError => StatusCode::BAD_GATEWAY,
            RejectReason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the answer must carry `Retry-After` (every 429 and 503).
    pub const fn needs_retry_after(self) -> bool {
        matches!(
            self.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
    }

    /// The JSON body `{"error": CODE, "message": TEXT}` every refusal carries.
    pub fn body(self, message: &str) -> bytes::Bytes {
        let v = serde_json::json!({ "error": self.as_str(), "message": message });
        bytes::Bytes::from(v.to_string())
    }
}

/// A request the gateway answers itself: why, what to tell the client, when
/// it may retry, and the state of the quota that refused it (for the
/// rate-limit headers). Every layer that can refuse returns this one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RejectReason,
    pub message: String,
    /// Seconds for `Retry-After`; every 429 and 503 gets one (1 if unset).
    pub retry_after_secs: Option<u64>,
    /// The client's quotas and which of them refused, when a quota did.
    pub quota: Option<(rate::QuotaState, rate::Exceeded)>,
}

impl Refusal {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
            retry_after_secs: None,
            quota: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The quota that refused, for the rate-limit headers.
    pub fn quota(mut self, state: rate::QuotaState, exceeded: rate::Exceeded) -> Self {
        self.quota = Some((state, exceeded));
        self
    }

    /// The `Retry-After` value, when this refusal needs one.
    pub fn retry_after_header(&self) -> Option<u64> {
        self.reason
            .needs_retry_after()
            .then(|| self.retry_after_secs.unwrap_or(1).max(1))
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_429_and_503_needs_retry_after() {
        assert!(RejectReason::RpmExceeded.needs_retry_after());
        assert!(RejectReason::ConnectionLimit.needs_retry_after());
        assert!(!RejectReason::NoRoute.needs_retry_after());
        assert_eq!(RejectReason::HeadersTooLarge.status().as_u16(), 431);
    }

    #[test]
    fn body_is_json_with_code_and_message() {
        let b = RejectReason::NoRoute.body("no route for \"x\"");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "no_route");
        assert_eq!(v["message"], "no route for \"x\"");
    }
}
