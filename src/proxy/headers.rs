//! Header handling on the way upstream and back: request ids, the
//! `X-Forwarded-*` family, hop-by-hop removal.

use std::net::IpAddr;

use http::header::{HeaderName, CONNECTION, HOST, UPGRADE};
use pingora::http::RequestHeader;
use pingora::prelude::*;

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

/// The client's `X-Request-Id` when it is well formed (1-128 characters of
/// `[A-Za-z0-9._:-]`), else a fresh random one.
pub fn request_id(req: &RequestHeader) -> String {
    if let Some(v) = req.headers.get(X_REQUEST_ID) {
        let b = v.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'));
        if ok {
            // Checked ASCII above.
            return String::from_utf8_lossy(b).into_owned();
        }
    }
    format!("{:032x}", fastrand::u128(..))
}

/// The host the request is for: the Host header (HTTP/1) or the
/// `:authority` (HTTP/2).
pub fn host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// Rewrites the upstream request's headers:
/// - `X-Forwarded-For`: the peer address is appended to a client-sent list
///   only when the peer is a trusted proxy; otherwise it replaces the list;
/// - `X-Forwarded-Proto`: kept from a trusted proxy, else set from the
///   downstream transport;
/// - hop-by-hop headers and the headers `Connection` names are removed,
///   except what a protocol upgrade (WebSocket) needs;
/// - `Host` is set from `:authority` when an HTTP/2 request has none;
/// - `X-Request-Id` carries the request id.
pub fn prepare_upstream(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    trusted_peer: bool,
    downstream_tls: bool,
    request_id: &str,
) -> Result<()> {
    strip_hop_by_hop(req);

    let xff = match (peer, trusted_peer) {
        (Some(ip), true) => match req.headers.get(X_FORWARDED_FOR).map(|v| v.to_str()) {
            Some(Ok(prev)) if !prev.trim().is_empty() => Some(format!("{prev}, {ip}")),
            _ => Some(ip.to_string()),
        },
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
    if !(trusted_peer && req.headers.contains_key(X_FORWARDED_PROTO)) {
        let proto = if downstream_tls { "https" } else { "http" };
        req.insert_header(X_FORWARDED_PROTO, proto)?;
    }
    if !req.headers.contains_key(HOST) {
        if let Some(a) = req.uri.authority().map(|a| a.as_str().to_string()) {
            req.insert_header(HOST, a)?;
        }
    }
    req.insert_header(X_REQUEST_ID, request_id)?;
    Ok(())
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
        prepare_upstream(
            &mut r,
            Some("10.0.0.9".parse().unwrap()),
            false,
            false,
            "id1",
        )
        .unwrap();
        assert_eq!(get(&r, "x-forwarded-for"), Some("10.0.0.9"));
        assert_eq!(get(&r, "x-forwarded-proto"), Some("http"));
        assert_eq!(get(&r, "x-request-id"), Some("id1"));
    }

    #[test]
    fn trusted_peer_appends() {
        let mut r = req(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        prepare_upstream(&mut r, Some("10.0.0.9".parse().unwrap()), true, false, "id").unwrap();
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
        prepare_upstream(&mut r, None, false, true, "id").unwrap();
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
        prepare_upstream(&mut r, None, false, false, "id").unwrap();
        assert_eq!(get(&r, "upgrade"), Some("websocket"));
        assert_eq!(get(&r, "connection"), Some("upgrade"));
    }

    #[test]
    fn request_id_kept_when_well_formed() {
        assert_eq!(request_id(&req(&[("x-request-id", "abc-123")])), "abc-123");
        let fresh = request_id(&req(&[("x-request-id", "bad id!")]));
        assert_eq!(fresh.len(), 32);
        assert_ne!(request_id(&req(&[])), request_id(&req(&[])));
    }
}
