//! The admin operations, once: typed inputs, typed outputs, one error type.
//! The REST adapter (`admin::rest`) and the gRPC adapter (`admin::grpc`)
//! only translate to and from their wire formats.

mod clients;
mod operations;
mod types;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use types::*;

use crate::runtime::control::{ChangeError, ControlPlane};
use crate::runtime::SharedRuntime;

/// What the admin operations can see.
#[derive(Clone)]
pub struct Admin {
    pub runtime: SharedRuntime,
    /// Set once the admin endpoint serves.
    pub ready: Arc<AtomicBool>,
    /// Set by SIGTERM or SIGQUIT: the gateway is finishing its requests
    /// before it exits (`/ready` answers 503 so that load balancers stop
    /// sending).
    pub draining: Arc<AtomicBool>,
    pub control: Arc<ControlPlane>,
    /// Bearer token for mutating calls (REST and gRPC).
    pub token: Option<String>,
    /// Fleet mode: the fleet's status.
    pub fleet: Option<Arc<crate::services::fleet::FleetStatus>>,
}

impl Admin {
    /// Whether `presented` (the bearer token of a call) may change things:
    /// always when there is no token, else when it matches in constant time.
    pub fn authorized(&self, presented: Option<&str>) -> bool {
        match &self.token {
            None => true,
            Some(token) => {
                let presented = presented.unwrap_or("");
                subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), token.as_bytes()).into()
            }
        }
    }
}

/// The token of an `Authorization` value `Bearer <token>` (the scheme in
/// any case, as RFC 9110 has it).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// What went wrong with an admin call. Each kind has one code (the JSON
/// `error`), one HTTP status and one gRPC status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The call is malformed or its values are out of range.
    BadRequest,
    /// A mutating call without the admin token.
    Unauthorized,
    /// No such client, host, route or resource.
    NotFound,
    /// The path exists, the method does not.
    MethodNotAllowed,
    /// The body is over the admin API's limit.
    BodyTooLarge,
    /// The call (its body included) took too long.
    Timeout,
    /// The new config file is invalid; the old one keeps serving.
    ConfigRejected,
    /// The change could not be persisted (nothing changed).
    StateNotSaved,
    /// A bug: the operation itself failed.
    Internal,
}

impl ErrorKind {
    pub const fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::Timeout => "request_timeout",
            ErrorKind::ConfigRejected => "config_rejected",
            ErrorKind::StateNotSaved => "state_not_saved",
            ErrorKind::Internal => "internal",
        }
    }
}

/// The one error type of the admin surface.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminError {
    pub kind: ErrorKind,
    pub message: String,
    /// `config_rejected`: every error of the new file.
    pub errors: Vec<ConfigIssue>,
}

impl AdminError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        AdminError {
            kind,
            message: message.into(),
            errors: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// The body of this error, as REST sends it.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.kind.code().to_string(),
            message: self.message.clone(),
            errors: (!self.errors.is_empty()).then(|| self.errors.clone()),
        }
    }
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}

impl From<ChangeError> for AdminError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Rejected(m) => AdminError::bad_request(m),
            ChangeError::NotSaved(m) => AdminError::new(ErrorKind::StateNotSaved, m),
        }
    }
}

/// Runs a control-plane call off the async workers: it may rebuild the
/// runtime and write the state file.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AdminError::new(ErrorKind::Internal, e.to_string()))
}

/// Parses a request body strictly: a JSON object of exactly the expected
/// shape (unknown fields, wrong types and other shapes are refused with the
/// path of the bad value). `expected` describes the shape for the message.
pub fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    expected: &str,
) -> Result<T, AdminError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        AdminError::bad_request(format!("the body is not JSON ({e}); expected {expected}"))
    })?;
    if !value.is_object() {
        return Err(AdminError::bad_request(format!(
            "the body must be a JSON object: {expected}"
        )));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at {path}")
        };
        AdminError::bad_request(format!("{}{at}; expected {expected}", e.into_inner()))
    })
}

/// The largest body an admin call accepts.
pub const MAX_BODY: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_parsed_strictly_with_the_path_of_the_bad_value() {
        let ok: ClientLimits = parse_body(br#"{"rpm": 5.0, "tpm": null}"#, "x").unwrap();
        assert_eq!((ok.rpm, ok.tpm, ok.enabled), (Some(5), None, true));
        for (body, needle) in [
            (&b"[1,2]"[..], "must be a JSON object"),
            (b"null", "must be a JSON object"),
            (br#"{"rpm": 1.5}"#, "at rpm"),
            (br#"{"rpm": -1}"#, "at rpm"),
            (br#"{"tpm": 1e30}"#, "at tpm"),
            (br#"{"colour": 1}"#, "colour"),
            (b"{", "not JSON"),
        ] {
            let e = parse_body::<ClientLimits>(body, "x").unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest);
            assert!(
                e.message.contains(needle),
                "{needle:?} not in {:?}",
                e.message
            );
        }
        let c: NewClient = parse_body(br#"{"client_id": "a"}"#, "x").unwrap();
        assert_eq!(c.id, "a");
    }

    #[test]
    fn hosts_the_pattern_describes_are_the_hosts_check_host_accepts() {
        // The pattern's class by hand: `!` to `~` but `%`.
        assert_eq!(HOST_PATTERN, "^[!-$&-~]+$");
        for b in 0..=255u8 {
            let host = format!("a{}", char::from(b));
            let described = (b'!'..=b'~').contains(&b) && b != b'%';
            assert_eq!(operations::check_host(&host).is_ok(), described, "{b:#x}");
        }
        assert!(operations::check_host("").is_err());
        assert!(operations::check_host(&"a".repeat(261)).is_ok());
        assert!(operations::check_host(&"a".repeat(262)).is_err());
    }

    #[test]
    fn ids_the_pattern_describes_are_the_ids_check_client_id_accepts() {
        // The pattern's character classes, by hand: what it refuses at the
        // ends (white space Rust's `trim` removes) and anywhere (controls).
        let edge_space = [
            '\t', '\n', '\u{b}', '\u{c}', '\r', ' ', '\u{85}', '\u{a0}', '\u{1680}', '\u{2000}',
            '\u{200a}', '\u{2028}', '\u{2029}', '\u{202f}', '\u{205f}', '\u{3000}',
        ];
        for c in edge_space {
            assert!(c.is_whitespace(), "{c:?}");
            let id = format!("{c}a");
            assert!(
                crate::limits::clients::check_client_id(id.as_bytes()).is_err(),
                "{c:?}"
            );
        }
        // Every other white space or control character Rust knows is in
        // one of the classes too.
        for c in (0..=0x10ffff_u32).filter_map(char::from_u32) {
            if c.is_whitespace() {
                assert!(
                    edge_space.contains(&c) || ('\u{2000}'..='\u{200a}').contains(&c),
                    "{c:?}"
                );
            }
            if c.is_control() {
                assert!(c <= '\u{1f}' || ('\u{7f}'..='\u{9f}').contains(&c), "{c:?}");
            }
        }
        let long = "é".repeat(256);
        assert!(crate::limits::clients::check_client_id(long.as_bytes()).is_ok());
        assert!(crate::limits::clients::check_client_id(format!("{long}e").as_bytes()).is_err());
    }
}
