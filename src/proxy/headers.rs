//! Header handling on the way upstream and back: request ids, the
//! `X-Forwarded-*` family, hop-by-hop removal.

use std::net::IpAddr;

use http::header::{HeaderName, CONNECTION, HOST, UPGRADE};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use crate::limits::rate::{Exceeded, QuotaState};

pub const X_REQUEST_ID: &str = "x-request-id";
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
/// `Transfer-Encoding` is not here: Pingora re-frames the body itself and
/// needs it to do so.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
];

/// Whether a client's `X-Request-Id` is kept: 1-128 characters of
/// `[A-Za-z0-9._:-]`.
pub fn valid_request_id(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

/// A fresh random request id.
pub fn new_request_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The client's `X-Request-Id` when it is well formed, else a fresh one.
pub fn request_id(req: &RequestHeader) -> String {
    match req.headers.get(X_REQUEST_ID) {
        // Checked ASCII by `valid_request_id`.
        Some(v) if valid_request_id(v.as_bytes()) => {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
        _ => new_request_id(),
    }
}

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
                .get_all(X_FORWARDED_FOR)
                .iter()
                .rev()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.rsplit(','));
            for e in entries {
                match parse_forwarded_ip(e.trim()) {
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
const FORWARDING: &[&str] = &["forwarded", "x-forwarded-host", "x-forwarded-port"];
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
/// - `Host` is set from `:authority` when an HTTP/2 request has none;
///   cookies an HTTP/2 client split into several fields are joined into
///   one (RFC 9113 §8.2.3), for an HTTP/1 upstream;
/// - `Content-Length` is written in its canonical form (`0010` is `10`);
/// - `X-Request-Id` carries the request id.
pub fn prepare_upstream(req: &mut RequestHeader, origin: &Origin, request_id: &str) -> Result<()> {
    strip_hop_by_hop(req);

    let xff = match (origin.peer, origin.trusted) {
        (Some(ip), true) => {
            let prev: Vec<&str> = req
                .headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect();
            match prev.is_empty() {
                true => Some(ip.to_string()),
                false => Some(format!("{}, {ip}", prev.join(", "))),
            }
        }
        (Some(ip), false) => Some(ip.to_string()),
        (None, _) => None,
    };
    match xff {
        Some(v) => {
            req.insert_header(X_FORWARDED_FOR, v)?;
        }
        None => {
            req.remove_header(X_FORWARDED_FOR);
        }
    }
    if !(origin.trusted && req.headers.contains_key(X_FORWARDED_PROTO)) {
        let proto = if origin.tls { "https" } else { "http" };
        req.insert_header(X_FORWARDED_PROTO, proto)?;
    }
    if !origin.trusted {
        for h in FORWARDING {
            req.remove_header(*h);
        }
    }
    match origin.client {
        Some(ip) => {
            req.insert_header(X_REAL_IP, ip.to_string())?;
        }
        None => {
            req.remove_header(X_REAL_IP);
        }
    }
    if !req.headers.contains_key(HOST) {
        if let Some(a) = req.uri.authority().map(|a| a.as_str().to_string()) {
            req.insert_header(HOST, a)?;
        }
    }
    join_cookies(req)?;
    canonical_content_length(req)?;
    req.insert_header(X_REQUEST_ID, request_id)?;
    Ok(())
}

/// One `Cookie` field for an HTTP/1 upstream (HTTP/2 clients may split
/// it into one field per cookie).
fn join_cookies(req: &mut RequestHeader) -> Result<()> {
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

/// Makes the resolved client id the only value of the id header upstream.
pub fn set_client_id(req: &mut RequestHeader, header: &HeaderName, id: &str) -> Result<()> {
    req.insert_header(header.clone(), id)?;
    Ok(())
}

/// The rate-limit headers of a response to a limited client:
/// `X-RateLimit-Limit/-Remaining/-Reset` for the quota closest to
/// exhaustion (or the one that refused), and the IETF draft
/// `RateLimit-Policy` and `RateLimit` listing both quotas.
pub fn rate_limit_headers(
    state: &QuotaState,
    refused: Option<Exceeded>,
) -> Vec<(&'static str, String)> {
    let w = state.window_ms.div_ceil(1000).max(1);
    let t = state.reset_ms.div_ceil(1000);
    let mut out = Vec::with_capacity(5);
    if let Some((_, limit, left)) = state.tightest(refused) {
        out.push(("x-ratelimit-limit", limit.to_string()));
        out.push(("x-ratelimit-remaining", left.to_string()));
        out.push(("x-ratelimit-reset", t.to_string()));
    }
    let dims = state.dimensions();
    let name = |d: Exceeded| match d {
        Exceeded::Requests => "requests",
        Exceeded::Tokens => "tokens",
    };
    if !dims.is_empty() {
        let policy: Vec<String> = dims
            .iter()
            .map(|(d, limit, _)| format!("\"{}\";q={limit};w={w}", name(*d)))
            .collect();
        let current: Vec<String> = dims
            .iter()
            .map(|(d, _, left)| format!("\"{}\";r={left};t={t}", name(*d)))
            .collect();
        out.push(("ratelimit-policy", policy.join(", ")));
        out.push(("ratelimit", current.join(", ")));
    }
    out
}

fn strip_hop_by_hop(req: &mut RequestHeader) {
    let upgrade = req.headers.contains_key(UPGRADE);
    // Names listed in Connection are hop-by-hop too.
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
    for n in HOP_BY_HOP {
        req.remove_header(*n);
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
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn get<'a>(r: &'a RequestHeader, k: &str) -> Option<&'a str> {
        r.headers.get(k).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn untrusted_peer_replaces_forwarded_for() {
        let mut r = req(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        let o = origin(&r, "10.0.0.9", &[]);
        prepare_upstream(&mut r, &o, "id1").unwrap();
        assert_eq!(get(&r, "x-forwarded-for"), Some("10.0.0.9"));
        assert_eq!(get(&r, "x-forwarded-proto"), Some("http"));
        assert_eq!(get(&r, "x-request-id"), Some("id1"));
    }

    fn origin(r: &RequestHeader, peer: &str, trusted: &[&str]) -> Origin {
        let nets: Vec<ipnet::IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        Origin::of(r, Some(peer.parse().unwrap()), false, |ip| {
            nets.iter().any(|n| n.contains(&ip))
        })
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_address() {
        let trusted = ["10.0.0.0/8"];
        let r = req(&[("x-forwarded-for", "203.0.113.7, 198.51.100.2, 10.0.0.5")]);
        assert_eq!(
            origin(&r, "10.0.0.9", &trusted).client,
            Some("198.51.100.2".parse().unwrap())
        );
        // From an untrusted peer the header is a claim, not a fact.
        assert_eq!(
            origin(&r, "192.0.2.1", &trusted).client,
            Some("192.0.2.1".parse().unwrap())
        );
        // Several header lines, ports and brackets; a malformed entry stops.
        let r = req(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "[2001:db8::1]:443, 10.1.1.1:80"),
        ]);
        assert_eq!(
            origin(&r, "10.0.0.9", &trusted).client,
            Some("2001:db8::1".parse().unwrap())
        );
        let r = req(&[("x-forwarded-for", "203.0.113.7, garbage, 10.0.0.5")]);
        assert_eq!(
            origin(&r, "10.0.0.9", &trusted).client,
            Some("10.0.0.5".parse().unwrap())
        );
    }

    #[test]
    fn forwarding_headers_only_from_trusted_peers() {
        let headers = [
            ("forwarded", "for=1.2.3.4;host=evil"),
            ("x-forwarded-host", "evil"),
            ("x-real-ip", "1.2.3.4"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("content-length", "0010"),
        ];
        let mut r = req(&headers);
        let o = origin(&r, "192.0.2.1", &["10.0.0.0/8"]);
        prepare_upstream(&mut r, &o, "id").unwrap();
        assert!(get(&r, "forwarded").is_none());
        assert!(get(&r, "x-forwarded-host").is_none());
        assert_eq!(get(&r, "x-real-ip"), Some("192.0.2.1"));
        assert_eq!(get(&r, "cookie"), Some("a=1; b=2"));
        assert_eq!(r.headers.get_all("cookie").iter().count(), 1);
        assert_eq!(get(&r, "content-length"), Some("10"));
        let mut r = req(&headers);
        let o = origin(&r, "10.0.0.9", &["10.0.0.0/8"]);
        prepare_upstream(&mut r, &o, "id").unwrap();
        assert_eq!(get(&r, "x-forwarded-host"), Some("evil"));
        assert_eq!(get(&r, "x-real-ip"), Some("10.0.0.9"));
    }

    #[test]
    fn trusted_peer_appends() {
        let mut r = req(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        let o = origin(&r, "10.0.0.9", &["10.0.0.0/8"]);
        prepare_upstream(&mut r, &o, "id").unwrap();
        assert_eq!(get(&r, "x-forwarded-for"), Some("1.2.3.4, 10.0.0.9"));
        assert_eq!(get(&r, "x-forwarded-proto"), Some("https"));
    }

    #[test]
    fn hop_by_hop_removed_upgrade_kept() {
        let mut r = req(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "s"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("x-keep", "k"),
        ]);
        let tls = Origin {
            tls: true,
            ..Origin::default()
        };
        prepare_upstream(&mut r, &tls, "id").unwrap();
        for h in [
            "connection",
            "keep-alive",
            "x-secret",
            "te",
            "proxy-authorization",
        ] {
            assert!(get(&r, h).is_none(), "{h} kept");
        }
        assert_eq!(get(&r, "x-keep"), Some("k"));
        assert_eq!(get(&r, "x-forwarded-proto"), Some("https"));

        let mut r = req(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        prepare_upstream(&mut r, &Origin::default(), "id").unwrap();
        assert_eq!(get(&r, "upgrade"), Some("websocket"));
        assert_eq!(get(&r, "connection"), Some("upgrade"));
    }

    #[test]
    fn rate_limit_headers_pick_the_tightest_quota() {
        use crate::limits::rate::{Quota, Usage};
        let state = QuotaState {
            quota: Quota {
                rpm: Some(10),
                tpm: Some(1000),
            },
            used: Usage {
                requests: 2,
                tokens: 900,
            },
            reset_ms: 12_300,
            window_ms: 60_000,
        };
        let h: std::collections::HashMap<_, _> =
            rate_limit_headers(&state, None).into_iter().collect();
        assert_eq!(h["x-ratelimit-limit"], "1000");
        assert_eq!(h["x-ratelimit-remaining"], "100");
        assert_eq!(h["x-ratelimit-reset"], "13");
        assert_eq!(
            h["ratelimit-policy"],
            "\"requests\";q=10;w=60, \"tokens\";q=1000;w=60"
        );
        assert_eq!(
            h["ratelimit"],
            "\"requests\";r=8;t=13, \"tokens\";r=100;t=13"
        );
        let h: std::collections::HashMap<_, _> =
            rate_limit_headers(&state, Some(Exceeded::Requests))
                .into_iter()
                .collect();
        assert_eq!(h["x-ratelimit-limit"], "10");
        let only_rpm = QuotaState {
            quota: Quota {
                rpm: Some(5),
                tpm: None,
            },
            ..state
        };
        let h: std::collections::HashMap<_, _> =
            rate_limit_headers(&only_rpm, None).into_iter().collect();
        assert_eq!(h["ratelimit-policy"], "\"requests\";q=5;w=60");
    }

    #[test]
    fn request_id_kept_when_well_formed() {
        assert_eq!(request_id(&req(&[("x-request-id", "abc-123")])), "abc-123");
        let fresh = request_id(&req(&[("x-request-id", "bad id!")]));
        assert_eq!(fresh.len(), 32);
        assert_ne!(request_id(&req(&[])), request_id(&req(&[])));
    }
}
