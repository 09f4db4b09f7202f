//! Header handling on the way upstream and back: request ids, the
//! `X-Forwarded-*` family, hop-by-hop removal.

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};
use pingora::http::{RequestHeader, ResponseHeader, WireLines, WireName};
use pingora::prelude::*;

mod ratelimit;
mod response;
mod seen;
mod values;
pub use ratelimit::{
    add_rate_limit_lines, rate_limit_headers, RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT,
    X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};
pub use response::{
    no_framing_on_204, own_version, refuse_unasked_switch, strip_response_hop_by_hop,
    takes_interim, unchunk_for_http10, ResponseNames,
};
pub use seen::Carries;
use seen::Seen;
pub use values::{ip_text, new_request_id, request_id, valid_request_id, RequestId};

pub const X_REQUEST_ID: &str = "x-request-id";
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

// A header name the gateway writes is a `WireName`: parsed once, with its
// wire spelling and its line's start ready to copy (so that setting it
// costs no parse and no allocation; see `vendor/README.md`).

pub static H_X_REQUEST_ID: WireName = WireName::new(X_REQUEST_ID);
static H_X_FORWARDED_FOR: WireName = WireName::new(X_FORWARDED_FOR);
static H_X_FORWARDED_PROTO: WireName = WireName::new(X_FORWARDED_PROTO);
static H_X_REAL_IP: WireName = WireName::new(X_REAL_IP);

/// Sets `name` to `value` on a request header, replacing any value.
fn set_request(req: &mut RequestHeader, name: &WireName, value: HeaderValue) {
    req.insert_header_name(name.name(), name.spelling(), value);
}

/// Sets `name` to `value` on a response header, replacing any value.
fn set_response(resp: &mut ResponseHeader, name: &WireName, value: HeaderValue) {
    resp.insert_header_name(name.name(), name.spelling(), value);
}

/// Adds a header the gateway sets on a request going upstream. When the
/// request carries none of that name (`absent`), its line is copied after
/// the others without entering Pingora's two header maps (an insert hashes
/// the name into each, and takes a value of its own); else it replaces the
/// request's own. An error: `value` is not a header value. See
/// `vendor/README.md`.
#[inline]
fn add_request(req: &mut RequestHeader, name: &WireName, value: &[u8], absent: bool) -> Result<()> {
    match absent {
        true => req.append_wire_header(name.name(), name.spelling(), value),
        false => {
            set_request(req, name, value_of(value)?);
            Ok(())
        }
    }
}

/// Adds a header the gateway sets on a response, as [`add_request`] does:
/// `absent` when the response carries none of the gateway's own headers
/// ([`ResponseNames::gateway`]).
#[inline]
pub fn add_response(
    resp: &mut ResponseHeader,
    name: &WireName,
    value: &[u8],
    absent: bool,
) -> Result<()> {
    match absent {
        true => resp.append_wire_header(name.name(), name.spelling(), value),
        false => {
            set_response(resp, name, value_of(value)?);
            Ok(())
        }
    }
}

fn value_of(value: &[u8]) -> Result<HeaderValue> {
    HeaderValue::from_bytes(value).or_err(InvalidHTTPHeader, "a gateway header's value")
}

/// The headers the gateway sets on its responses.
pub const GATEWAY_RESPONSE_HEADERS: [&str; 6] = [
    X_REQUEST_ID,
    ratelimit::names::LIMIT,
    ratelimit::names::REMAINING,
    ratelimit::names::RESET,
    ratelimit::names::POLICY,
    ratelimit::names::STATE,
];

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
/// `Transfer-Encoding` is not here: Pingora re-frames the body itself and
/// needs it to do so. (Names, not strings: a lookup by `HeaderName` hashes
/// without parsing.)
const HOP_BY_HOP: [HeaderName; 6] = [
    KEEP_ALIVE,
    PROXY_CONNECTION,
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
];

/// Every name Pingora's standard upstream request policy acts on
/// (`HttpUpstreamRequestPolicy::standard()`: the names `Connection` lists,
/// the standard hop-by-hop fields, the HTTP/1 upgrade fields). A request
/// that carries none ([`Carries::policy`]) is one the policy changes
/// nothing on — no `Connection` to read nominations from, no upgrade,
/// nothing to strip — and its peer skips it (about a dozen hashed removals
/// of absent names, each hashing the name, some parsing it first).
const POLICY_NAMES: [&str; 10] = [
    "connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "http2-settings",
];

/// The host the request is for: the Host header (HTTP/1) or the
/// `:authority` (HTTP/2).
pub fn host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// Who sent a request, as far as the gateway can trust it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Origin {
    /// The TCP peer.
    pub peer: Option<IpAddr>,
    /// The peer is one of `trusted_proxies`: its forwarding headers hold.
    pub trusted: bool,
    /// The client: the right-most address of `X-Forwarded-For` that is not
    /// a trusted proxy (when the peer is trusted), else the peer.
    pub client: Option<IpAddr>,
    /// The request came over TLS.
    pub tls: bool,
}

impl Origin {
    /// Works out the client behind `peer`, walking `X-Forwarded-For` from
    /// the right past every trusted proxy (as nginx's realip module and
    /// Envoy's `xff_num_trusted_hops` do). A malformed entry stops the walk:
    /// the last trusted hop is the client then.
    pub fn of(
        req: &RequestHeader,
        peer: Option<IpAddr>,
        tls: bool,
        trusted: impl Fn(IpAddr) -> bool,
    ) -> Origin {
        let peer_trusted = peer.is_some_and(&trusted);
        let mut client = peer;
        if peer_trusted {
            let entries = req
                .headers
                .get_all(H_X_FORWARDED_FOR.name())
                .iter()
                .rev()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.rsplit(','))
                .map(str::trim)
                // An empty element is no element (RFC 9110 §5.6.1): it
                // neither names a client nor stops the walk.
                .filter(|e| !e.is_empty());
            for e in entries {
                match parse_forwarded_ip(e) {
                    Some(ip) => {
                        client = Some(ip);
                        if !trusted(ip) {
                            break;
                        }
                    }
                    None => break,
                }
            }
        }
        Origin {
            peer,
            trusted: peer_trusted,
            client,
            tls,
        }
    }
}

/// An address in a forwarding header: `1.2.3.4`, `1.2.3.4:5678`, `::1`,
/// `[::1]:5678`.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Headers that say who a client is or what it asked for, believed only
/// from a trusted proxy.
const FORWARDING: [HeaderName; 3] = [
    http::header::FORWARDED,
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
];
const X_REAL_IP: &str = "x-real-ip";

/// Rewrites the upstream request's headers:
/// - `X-Forwarded-For`: the peer address is appended to a client-sent list
///   only when the peer is a trusted proxy; otherwise it replaces the list;
/// - `X-Forwarded-Proto`: kept from a trusted proxy, else set from the
///   downstream transport;
/// - `Forwarded`, `X-Forwarded-Host`, `X-Forwarded-Port`: kept from a
///   trusted proxy, else removed; `X-Real-IP` is the client's address;
/// - hop-by-hop headers and the headers `Connection` names are removed,
///   except what a protocol upgrade (WebSocket) needs;
/// - `Host` is set from `:authority` when an HTTP/2 request has none, and
///   to `backend`'s address when a request has neither (HTTP/1.0);
///   cookies an HTTP/2 client split into several fields are joined into
///   one (RFC 9113 §8.2.3), for an HTTP/1 upstream;
/// - `Content-Length` is written in its canonical form (`0010` is `10`);
/// - `X-Request-Id` carries the request id.
pub fn prepare_upstream(
    req: &mut RequestHeader,
    origin: &Origin,
    request_id: &RequestId,
    backend: Option<std::net::SocketAddr>,
) -> Result<()> {
    // No room is made in the header maps for what is added below: the
    // gateway's own headers go after them (`add_request`) unless they
    // replace a client's, which takes no room either.
    // One pass over the names the client sent, instead of a hashed look-up
    // for each name below that a request usually does not carry.
    let mut seen = Seen::of(req);
    if seen.upgrade || seen.connection {
        strip_listed(req);
        seen = Seen::of(req);
    }
    if seen.hop_by_hop {
        for n in &HOP_BY_HOP {
            req.remove_header(n);
        }
    }

    // The peer's address as text, on the stack: `X-Forwarded-For` is it,
    // or a trusted proxy's list with it added; `X-Real-IP` the client's.
    let peer = origin.peer.map(ip_text);
    let chain = match (origin.peer, origin.trusted) {
        (Some(ip), true) if seen.forwarded_for => {
            // The list's elements, empty ones dropped, on one line.
            let prev: Vec<&str> = req
                .headers
                .get_all(H_X_FORWARDED_FOR.name())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect();
            match prev.is_empty() {
                true => None,
                false => Some(format!("{}, {ip}", prev.join(", "))),
            }
        }
        _ => None,
    };
    let xff: Option<&[u8]> = match &chain {
        Some(c) => Some(c.as_bytes()),
        None => peer.as_ref().map(AsRef::as_ref),
    };
    if xff.is_none() && seen.forwarded_for {
        req.remove_header(H_X_FORWARDED_FOR.name());
    }
    if !origin.trusted && seen.forwarding {
        for h in &FORWARDING {
            req.remove_header(h);
        }
    }
    if origin.client.is_none() && seen.real_ip {
        req.remove_header(H_X_REAL_IP.name());
    }
    if !seen.host {
        // HTTP/2's `:authority`; else (an HTTP/1.0 request may have no
        // Host, and goes upstream as HTTP/1.1, which must) the backend's
        // address, as nginx sends its upstream's.
        let host = match req.uri.authority() {
            Some(a) => Some(a.as_str().to_string()),
            None => backend.map(|b| b.to_string()),
        };
        if let Some(h) = host {
            req.insert_header(HOST, h)?;
        }
    }
    if seen.cookie {
        join_cookies(req)?;
    }
    if seen.content_length {
        canonical_content_length(req)?;
    }
    // The gateway's own headers last, after every removal: one the client
    // did not send is written after the others, outside the header maps
    // (see `add_request`), rendered together on the stack and added in
    // one copy (a line past the room of the lines would be added by
    // itself; these four take at most ~280 of its 512 bytes). A header
    // the client sent is replaced in the maps instead, as is a trusted
    // proxy's chain, whatever its length.
    let mut lines = WireLines::new();
    let mut put = |req: &mut RequestHeader, name: &WireName, v: &[u8], absent: bool| match absent
        && lines.add(name, v).is_ok()
    {
        true => Ok(()),
        false => add_request(req, name, v, absent),
    };
    if let Some(v) = xff {
        put(req, &H_X_FORWARDED_FOR, v, !seen.forwarded_for)?;
    }
    if !(origin.trusted && seen.forwarded_proto) {
        let proto: &[u8] = if origin.tls { b"https" } else { b"http" };
        put(req, &H_X_FORWARDED_PROTO, proto, !seen.forwarded_proto)?;
    }
    if let Some(ip) = origin.client {
        // The peer's text again when the client is the peer.
        let own;
        let text: &[u8] = match &peer {
            Some(p) if origin.peer == Some(ip) => p.as_ref(),
            _ => {
                own = ip_text(ip);
                own.as_ref()
            }
        };
        put(req, &H_X_REAL_IP, text, !seen.real_ip)?;
    }
    put(
        req,
        &H_X_REQUEST_ID,
        request_id.as_bytes(),
        !seen.request_id,
    )?;
    if !lines.is_empty() {
        req.append_wire_lines(&lines);
    }
    Ok(())
}

/// The gateway's headers on a response: its request id (when it has one)
/// and, for a client under a quota, the rate-limit headers. When the
/// response carries none of them (`absent`: [`ResponseNames::gateway`]),
/// they are written after the upstream's, outside the header maps,
/// rendered together on the stack and added in one copy; else each
/// replaces the response's own.
pub fn add_gateway_response_headers(
    resp: &mut ResponseHeader,
    id: Option<&[u8]>,
    quota: Option<(
        &crate::limits::rate::QuotaState,
        Option<crate::limits::rate::Exceeded>,
    )>,
    absent: bool,
) -> Result<()> {
    let mut lines = WireLines::new();
    // A line past the room of the lines is added by itself; one whose
    // value is refused is refused again there, as an error.
    let put =
        |lines: &mut WireLines, resp: &mut ResponseHeader, name: &WireName, v: &[u8]| match absent
            && lines.add(name, v).is_ok()
        {
            true => Ok(()),
            false => add_response(resp, name, v, absent),
        };
    if let Some(id) = id {
        put(&mut lines, resp, &H_X_REQUEST_ID, id)?;
    }
    if let Some((state, refused)) = quota {
        // In one piece when they fit beside the id.
        if !(absent && add_rate_limit_lines(state, refused, &mut lines).is_ok()) {
            rate_limit_headers(state, refused, |k, v| put(&mut lines, resp, k, v))?;
        }
    }
    if !lines.is_empty() {
        resp.append_wire_lines(&lines);
    }
    Ok(())
}

/// One `Cookie` field for an HTTP/1 upstream (HTTP/2 clients may split
/// it into one field per cookie).
fn join_cookies(req: &mut RequestHeader) -> Result<()> {
    let mut cookies = req.headers.get_all(http::header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return Ok(());
    }
    let values: Vec<String> = req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    if values.len() > 1 {
        req.insert_header(http::header::COOKIE, values.join("; "))?;
    }
    Ok(())
}

/// `Content-Length` as one canonical number (Pingora has already refused
/// requests whose copies disagree).
fn canonical_content_length(req: &mut RequestHeader) -> Result<()> {
    let mut values = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    let (Some(first), rest) = (values.next(), values.count()) else {
        return Ok(());
    };
    let text = first.as_bytes();
    let canonical = text.first() != Some(&b'0') || text.len() == 1;
    if rest == 0 && canonical {
        return Ok(());
    }
    if let Some(n) = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
    {
        req.insert_header(http::header::CONTENT_LENGTH, n)?;
    }
    Ok(())
}

/// Whether a response header is an interim one (1xx other than 101): the
/// final response is still to come.
pub fn is_interim(resp: &ResponseHeader) -> bool {
    resp.status.is_informational() && resp.status != http::StatusCode::SWITCHING_PROTOCOLS
}

/// Whether a final response header is the whole response: no body can
/// follow (RFC 9110 §6.4.1: a response to HEAD, a 204 or a 304) or the
/// body is declared empty. Pingora calls no body filter for these, so the
/// request settles when its header passes.
pub fn ends_with_header(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    req.method == http::Method::HEAD
        || matches!(resp.status.as_u16(), 204 | 304)
        || resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0")
}

/// Whether a client's line of this name reaches the upstream as it was
/// sent whatever else the request carries, `Connection` aside (which may
/// list any name): no step of the upstream request's preparation (here,
/// the API key's removal, Pingora's hop-by-hop policy) removes or
/// rewrites it.
pub fn kept_upstream(name: &HeaderName) -> bool {
    let rewritten = [
        &HOST,
        &http::header::COOKIE,
        &http::header::CONTENT_LENGTH,
        &http::header::AUTHORIZATION,
        H_X_FORWARDED_FOR.name(),
        H_X_FORWARDED_PROTO.name(),
        H_X_REAL_IP.name(),
        H_X_REQUEST_ID.name(),
    ];
    !(rewritten.contains(&name)
        || HOP_BY_HOP.contains(name)
        || FORWARDING.contains(name)
        || POLICY_NAMES.contains(&name.as_str()))
}

/// Makes the resolved client id the only value of the id header upstream.
pub fn set_client_id(req: &mut RequestHeader, header: &HeaderName, id: &str) -> Result<()> {
    // Already so (a client that named itself in the header): nothing to
    // rewrite, one look-up instead of an insert into both header maps.
    let mut values = req.headers.get_all(header).iter();
    if let (Some(v), None) = (values.next(), values.next()) {
        if v.as_bytes() == id.as_bytes() {
            return Ok(());
        }
    }
    req.insert_header(header.clone(), id)?;
    Ok(())
}

/// Removes the names `Connection` lists (hop-by-hop too) and
/// `Connection` itself, except what a protocol upgrade (WebSocket) needs.
fn strip_listed(req: &mut RequestHeader) {
    let upgrade = req.headers.contains_key(UPGRADE);
    let listed: Vec<HeaderName> = req
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && *n == UPGRADE))
        .filter(|n| *n != http::header::TRANSFER_ENCODING && *n != HOST)
        .collect();
    for n in listed {
        req.remove_header(&n);
    }
    if upgrade {
        // Keep exactly what the upgrade needs.
        let _ = req.insert_header(CONNECTION, "upgrade");
    } else {
        req.remove_header(&CONNECTION);
        req.remove_header(&UPGRADE);
    }
}

#[cfg(test)]
mod tests;
