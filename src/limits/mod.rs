//! Limiters and the vocabulary of their decisions.
//!
//! Every refusal the gateway writes itself has one [`RejectReason`]; its
//! [`RejectReason::as_str`] is at once the `error` code in the JSON body and
//! the `outcome` label of `floodgate_requests_total`: one name, one place.

pub mod adaptive;
pub mod clients;
pub mod clock;
pub mod connections;
pub mod destinations;
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
    /// The client is over its requests per window.
    RpmExceeded,
    /// The client is over its tokens per window.
    TpmExceeded,
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
            RejectReason::RpmExceeded => "rpm_exceeded",
            RejectReason::TpmExceeded => "tpm_exceeded",
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
            RejectReason::EstimateTooLarge | RejectReason::BodyTooLarge => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            RejectReason::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RejectReason::RpmExceeded | RejectReason::TpmExceeded => StatusCode::TOO_MANY_REQUESTS,
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
