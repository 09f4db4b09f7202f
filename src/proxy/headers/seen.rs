//! One pass over a request's header names: which of those
//! [`super::prepare_upstream`] acts on it carries, instead of a hashed
//! look-up for each name a request usually does not carry.

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
