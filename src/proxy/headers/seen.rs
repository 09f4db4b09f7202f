//! One pass over a request's header names: which of those
//! [`super::prepare_upstream`] acts on it carries ([`Seen`]), and which
//! of those the request filter reads ([`Carries`]), instead of a hashed
//! look-up for each name a request usually does not carry.

use http::HeaderName;
use pingora::http::RequestHeader;

use super::{X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REAL_IP, X_REQUEST_ID};

/// Which of the names [`super::prepare_upstream`] acts on a request carries.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) upgrade: bool,
    pub(super) connection: bool,
    /// Any of [`super::HOP_BY_HOP`].
    pub(super) hop_by_hop: bool,
    /// Any of [`super::FORWARDING`].
    pub(super) forwarding: bool,
    pub(super) forwarded_for: bool,
    pub(super) forwarded_proto: bool,
    pub(super) real_ip: bool,
    pub(super) request_id: bool,
    pub(super) host: bool,
    pub(super) cookie: bool,
    pub(super) content_length: bool,
}

impl Seen {
    pub(super) fn of(req: &RequestHeader) -> Seen {
        let mut s = Seen::default();
        // Names in a `HeaderMap` are lower case.
        for name in req.headers.keys() {
            match name.as_str() {
                "upgrade" => s.upgrade = true,
                "connection" => s.connection = true,
                "keep-alive"
                | "proxy-connection"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "te"
                | "trailer" => s.hop_by_hop = true,
                "forwarded" | "x-forwarded-host" | "x-forwarded-port" => s.forwarding = true,
                X_FORWARDED_FOR => s.forwarded_for = true,
                X_FORWARDED_PROTO => s.forwarded_proto = true,
                X_REAL_IP => s.real_ip = true,
                X_REQUEST_ID => s.request_id = true,
                "host" => s.host = true,
                "cookie" => s.cookie = true,
                "content-length" => s.content_length = true,
                _ => {}
            }
        }
        s
    }
}

/// Which of the names the request filter reads a request carries: a name
/// it does not carry needs no look-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carries {
    pub request_id: bool,
    pub connection: bool,
    pub content_length: bool,
    pub authorization: bool,
    /// The configured client id header (`clients.id_header`).
    pub id_header: bool,
    /// The configured token estimate header (`clients.token_header`).
    pub token_header: bool,
    /// Any name Pingora's standard upstream request policy acts on
    /// (`POLICY_NAMES`): without one, the policy would change nothing on
    /// the request, and its peer skips it.
    pub policy: bool,
}

impl Carries {
    /// Every name, as a request that carries them all: what a caller
    /// without the pass assumes (each look-up is made).
    pub const ALL: Carries = Carries {
        request_id: true,
        connection: true,
        content_length: true,
        authorization: true,
        id_header: true,
        token_header: true,
        policy: true,
    };

    pub fn of(req: &RequestHeader, id_header: &HeaderName, token_header: &HeaderName) -> Carries {
        let mut c = Carries::default();
        // Names in a `HeaderMap` are lower case, each once.
        for name in req.headers.keys() {
            match name.as_str() {
                X_REQUEST_ID => c.request_id = true,
                "connection" => {
                    c.connection = true;
                    c.policy = true;
                }
                "content-length" => c.content_length = true,
                "authorization" => c.authorization = true,
                // `POLICY_NAMES` but `connection`, as arms.
                "upgrade"
                | "keep-alive"
                | "proxy-connection"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "http2-settings" => c.policy = true,
                _ => {}
            }
            c.id_header |= name == id_header;
            c.token_header |= name == token_header;
        }
        c
    }
}
