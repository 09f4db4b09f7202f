//! Headers on the way upstream and back.

use super::*;

fn req(headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/", None).unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

fn id(s: &'static str) -> RequestId {
    RequestId::sent(HeaderValue::from_static(s))
}

/// The first value of `k` the upstream is sent: the header maps and the
/// headers written after them (`append_wire_header`) alike.
fn get(r: &RequestHeader, k: &str) -> Option<&'static str> {
    let all = r.as_owned_parts().headers;
    let v = all.get(k)?.to_str().unwrap().to_string();
    Some(Box::leak(v.into_boxed_str()))
}

/// The header lines an HTTP/1 upstream is sent.
fn wire(r: &RequestHeader) -> String {
    let mut buf: Vec<u8> = vec![];
    r.header_to_h1_wire(&mut buf);
    String::from_utf8(buf).unwrap()
}

#[test]
fn the_gateway_headers_go_upstream_once_whether_the_client_sent_them_or_not() {
    let names = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-real-ip",
        "x-request-id",
    ];
    let sent: Vec<(&str, &str)> = names.iter().map(|n| (*n, "from-client")).collect();
    for client in [&[][..], &sent[..]] {
        let mut r = req(client);
        let o = origin(&r, "10.0.0.9", &[]);
        prepare_upstream(&mut r, &o, &id("id1"), None).unwrap();
        let wire = wire(&r);
        for n in names {
            let lines: Vec<&str> = wire
                .lines()
                .filter(|l| l.to_ascii_lowercase().starts_with(&format!("{n}:")))
                .collect();
            assert_eq!(lines.len(), 1, "{n} in {wire:?}");
            assert!(!lines[0].contains("from-client"), "{n} in {wire:?}");
        }
        assert_eq!(get(&r, "x-request-id"), Some("id1"));
        // A later change to one of them (an upstream's `set_headers` or
        // `remove_headers`) acts on the value the gateway set.
        r.insert_header("X-Request-Id", "op").unwrap();
        r.remove_header("x-real-ip");
        let wire = self::wire(&r);
        assert_eq!(wire.matches("op").count(), 1, "{wire:?}");
        assert!(!wire.contains("id1") && !wire.to_ascii_lowercase().contains("x-real-ip"));
    }
}

#[test]
fn untrusted_peer_replaces_forwarded_for() {
    let mut r = req(&[
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-proto", "https"),
    ]);
    let o = origin(&r, "10.0.0.9", &[]);
    prepare_upstream(&mut r, &o, &id("id1"), None).unwrap();
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
    prepare_upstream(&mut r, &o, &id("id"), None).unwrap();
    assert!(get(&r, "forwarded").is_none());
    assert!(get(&r, "x-forwarded-host").is_none());
    assert_eq!(get(&r, "x-real-ip"), Some("192.0.2.1"));
    assert_eq!(get(&r, "cookie"), Some("a=1; b=2"));
    assert_eq!(r.headers.get_all("cookie").iter().count(), 1);
    assert_eq!(get(&r, "content-length"), Some("10"));
    let mut r = req(&headers);
    let o = origin(&r, "10.0.0.9", &["10.0.0.0/8"]);
    prepare_upstream(&mut r, &o, &id("id"), None).unwrap();
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
    prepare_upstream(&mut r, &o, &id("id"), None).unwrap();
    assert_eq!(get(&r, "x-forwarded-for"), Some("1.2.3.4, 10.0.0.9"));
    assert_eq!(get(&r, "x-forwarded-proto"), Some("https"));
    // The client, not the peer whose address the list ends with.
    assert_eq!(get(&r, "x-real-ip"), Some("1.2.3.4"));
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
    prepare_upstream(&mut r, &tls, &id("id"), None).unwrap();
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
    prepare_upstream(&mut r, &Origin::default(), &id("id"), None).unwrap();
    assert_eq!(get(&r, "upgrade"), Some("websocket"));
    assert_eq!(get(&r, "connection"), Some("upgrade"));
}

#[test]
fn the_client_id_is_the_only_value_upstream() {
    let h = HeaderName::from_static("x-client-id");
    // Already the only value: left as sent.
    let mut r = req(&[("X-Client-ID", "c7")]);
    set_client_id(&mut r, &h, "c7").unwrap();
    assert_eq!(r.headers.get_all(&h).iter().count(), 1);
    assert_eq!(get(&r, "x-client-id"), Some("c7"));
    // Another value, two values, or none: the resolved id only.
    for sent in [
        &[("x-client-id", "mallory")][..],
        &[("x-client-id", "c7"), ("x-client-id", "x")],
        &[],
    ] {
        let mut r = req(sent);
        set_client_id(&mut r, &h, "c7").unwrap();
        let all: Vec<_> = r.headers.get_all(&h).iter().collect();
        assert_eq!(all, ["c7"], "{sent:?}");
    }
}

#[test]
fn names_the_gateway_rewrites_are_not_kept_as_sent() {
    for n in [
        "x-client-id",
        "x-tenant",
        "x-forwarded-path",
        "x-request",
        "proxy",
    ] {
        assert!(kept_upstream(&HeaderName::from_static(n)), "{n}");
    }
    for n in [
        "host",
        "cookie",
        "content-length",
        "authorization",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "forwarded",
        "x-real-ip",
        "x-request-id",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    ] {
        assert!(!kept_upstream(&HeaderName::from_static(n)), "{n}");
    }
}

#[test]
fn request_id_kept_when_well_formed() {
    assert_eq!(
        request_id(&req(&[("x-request-id", "abc-123")]), true).as_str(),
        "abc-123"
    );
    let fresh = request_id(&req(&[("x-request-id", "bad id!")]), true);
    assert_eq!(fresh.as_str().len(), 32);
    assert!(valid_request_id(fresh.as_str().as_bytes()));
    assert_ne!(
        request_id(&req(&[]), false).as_str(),
        request_id(&req(&[]), false).as_str()
    );
}

#[test]
fn the_one_pass_knows_every_name_the_lists_hold() {
    // `Seen::of` matches names as text; the lists hold them as
    // `HeaderName`s. A name added to one must be added to the other.
    for n in &HOP_BY_HOP {
        let r = req(&[(n.as_str(), "x")]);
        assert!(Seen::of(&r).hop_by_hop, "{n}");
    }
    for n in &FORWARDING {
        let r = req(&[(n.as_str(), "x")]);
        assert!(Seen::of(&r).forwarding, "{n}");
    }
    let r = req(&[
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-Proto", "https"),
        ("X-Real-IP", "1.2.3.4"),
    ]);
    let s = Seen::of(&r);
    assert!(s.forwarded_for && s.forwarded_proto && s.real_ip);
    assert!(!(s.hop_by_hop || s.forwarding || s.host || s.cookie || s.content_length));
}

#[test]
fn empty_forwarded_for_elements_are_no_elements() {
    // "3.3.3.3," from a trusted proxy: the client is 3.3.3.3, not the
    // proxy (an empty element used to stop the walk at the proxy).
    let trusted = ["127.0.0.0/8"];
    for lines in [
        &[("x-forwarded-for", "3.3.3.3,")][..],
        &[("x-forwarded-for", "3.3.3.3"), ("x-forwarded-for", "")],
        &[("x-forwarded-for", " , 3.3.3.3 , ,")],
    ] {
        let mut r = req(lines);
        let o = origin(&r, "127.0.0.1", &trusted);
        assert_eq!(o.client, Some("3.3.3.3".parse().unwrap()), "{lines:?}");
        // Upstream, the list without its empty elements, the peer last.
        prepare_upstream(&mut r, &o, &id("id"), None).unwrap();
        assert_eq!(
            get(&r, "x-forwarded-for"),
            Some("3.3.3.3, 127.0.0.1"),
            "{lines:?}"
        );
        assert_eq!(get(&r, "x-real-ip"), Some("3.3.3.3"), "{lines:?}");
    }
}

#[test]
fn the_first_well_formed_request_id_is_the_one() {
    // As the connection guard's refusals take it (`find_request_id`).
    let r = req(&[("x-request-id", "bad id"), ("x-request-id", "good")]);
    assert_eq!(request_id(&r, true).as_str(), "good");
}

#[test]
fn a_request_without_host_gets_the_backends_address() {
    // HTTP/1.0 without Host: the backend's address upstream.
    let mut r = req(&[]);
    let backend = "10.0.0.1:8080".parse().ok();
    prepare_upstream(&mut r, &Origin::default(), &id("id"), backend).unwrap();
    assert_eq!(get(&r, "host"), Some("10.0.0.1:8080"));
    // The client's Host is kept.
    let mut r = req(&[("host", "api.example")]);
    prepare_upstream(&mut r, &Origin::default(), &id("id"), backend).unwrap();
    assert_eq!(get(&r, "host"), Some("api.example"));
}

/// The one pass finds every name the request filter reads, the configured
/// ones too, whatever the case the client wrote them in, and nothing else.
#[test]
fn carries_finds_each_name_the_request_filter_reads() {
    let id = HeaderName::from_static("x-client-id");
    let token = HeaderName::from_static("x-token-estimate");
    assert_eq!(
        Carries::of(&req(&[("host", "a")]), &id, &token),
        Carries::default()
    );
    let all = req(&[
        ("X-Request-Id", "r"),
        ("Connection", "close"),
        ("Content-Length", "0"),
        ("Authorization", "Bearer k"),
        ("X-Client-Id", "c"),
        ("X-Token-Estimate", "5"),
    ]);
    assert_eq!(Carries::of(&all, &id, &token), Carries::ALL);
    let one = |name: &str| Carries::of(&req(&[(name, "v")]), &id, &token);
    assert!(one("x-request-id").request_id);
    assert!(one("CONNECTION").connection);
    assert!(one("content-length").content_length);
    assert!(one("authorization").authorization);
    assert!(one("x-client-id").id_header);
    assert!(one("x-token-estimate").token_header);
    assert_eq!(one("x-request-ids"), Carries::default());
    // Each name Pingora's upstream policy acts on, in any case.
    for n in POLICY_NAMES {
        assert!(one(n).policy, "{n}");
        assert!(one(&n.to_uppercase()).policy, "{n}");
    }
    assert!(!one("x-upgrade").policy);
}

/// What describes the upstream's connection stays off the client's
/// answer (found by a hostile-client run): the names `Connection` lists,
/// `Keep-Alive`, `Proxy-Connection`, `Upgrade`; the body's framing stays
/// however `Connection` names it, and a 101 keeps its handshake.
#[test]
fn a_response_s_hop_by_hop_fields_are_removed() {
    let resp = |status: u16| {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in [
            ("Connection", "X-Secret, close, Transfer-Encoding"),
            ("Connection", "x-other"),
            ("X-Secret", "s"),
            ("X-Other", "o"),
            ("Keep-Alive", "timeout=1"),
            ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "h2c"),
            ("Transfer-Encoding", "chunked"),
            ("X-Kept", "k"),
        ] {
            r.append_header(k.to_string(), v).unwrap();
        }
        r
    };
    let mut r = resp(200);
    let found = ResponseNames::of(&r);
    assert!(found.connection && found.keep_alive && found.proxy_connection && found.upgrade);
    assert!(!found.gateway);
    strip_response_hop_by_hop(&mut r, found);
    // Connection itself: Pingora writes the client's own.
    let mut names: Vec<&str> = r.headers.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["connection", "transfer-encoding", "x-kept"]);
    let mut r = resp(101);
    let before = r.headers.clone();
    strip_response_hop_by_hop(&mut r, found);
    assert_eq!(r.headers, before);
    // An interim answer, whose Connection Pingora leaves as it is.
    let mut r = resp(103);
    let interim = ResponseNames::of(&r);
    assert!(interim.interim_connection && !found.interim_connection);
    strip_response_hop_by_hop(&mut r, interim);
    assert!(!r.headers.contains_key("connection"));
    let plain = ResponseHeader::build(200, None).unwrap();
    assert!(!ResponseNames::of(&plain).hop_by_hop());
    // The usual options name no field: nothing to do (Keep-Alive itself,
    // when present, is found by its name).
    let connection = |values: &[&str]| {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for v in values {
            r.append_header("Connection", *v).unwrap();
        }
        ResponseNames::of(&r)
    };
    for usual in [
        &["keep-alive"][..],
        &["Keep-Alive"],
        &["close"],
        &[" keep-alive , "],
        &["keep-alive", "CLOSE"],
    ] {
        let n = connection(usual);
        assert!(
            n.connection && !n.connection_names && !n.hop_by_hop(),
            "{usual:?}"
        );
    }
    for naming in [
        &["keep-alive, X-Secret"][..],
        &["keep-alive", "x-secret"],
        &["Upgrade"],
    ] {
        let n = connection(naming);
        assert!(n.connection_names && n.hop_by_hop(), "{naming:?}");
    }
    // Each of the gateway's names, in any case, beside an upstream's usual.
    for name in GATEWAY_RESPONSE_HEADERS {
        let mut one = ResponseHeader::build(200, None).unwrap();
        one.append_header("Server", "nginx").unwrap();
        one.append_header(name.to_ascii_uppercase(), "u").unwrap();
        assert!(ResponseNames::of(&one).gateway, "{name}");
    }
}

/// The header lines an HTTP/1 client is sent.
fn response_wire(r: &ResponseHeader) -> String {
    let mut buf: Vec<u8> = vec![];
    r.header_to_h1_wire(&mut buf);
    String::from_utf8(buf).unwrap()
}

#[test]
fn the_gateway_s_response_lines_are_each_header_once_however_long() {
    use crate::limits::rate::{Quota, QuotaState, Usage};
    // The longest values that can come (a client's 128-character request
    // id, the largest quotas, a window of u64::MAX ms) take 461 bytes of
    // the 512 the gateway renders its lines in; a longer id than any
    // client can send takes the way of a line past them (by itself).
    let long_id = "i".repeat(180);
    for (id, window_ms) in [("a".repeat(32), 60_000), (long_id, u64::MAX)] {
        let state = QuotaState {
            quota: Quota {
                rpm: Some(crate::limits::rate::MAX_RPM),
                tpm: Some(crate::limits::rate::MAX_TPM),
            },
            used: Usage {
                requests: 1,
                tokens: 10,
            },
            reset_ms: window_ms,
            window_ms,
        };
        let mut expected = vec![format!("x-request-id: {id}")];
        let Ok(()) = rate_limit_headers(&state, None, |k, v| {
            expected.push(format!(
                "{}: {}",
                k.spelling(),
                std::str::from_utf8(v).unwrap()
            ));
            Ok::<(), std::convert::Infallible>(())
        });
        assert_eq!(expected.len(), 6);
        // Upstream sent none of them: written after its own, in lines.
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.append_header("Server", "origin").unwrap();
        let q = Some((&state, None));
        add_gateway_response_headers(&mut r, Some(id.as_bytes()), q, true).unwrap();
        let wire = response_wire(&r);
        let mut lines: Vec<&str> = wire.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.remove(0), "Server: origin", "{wire}");
        lines.sort_unstable();
        expected.sort_unstable();
        assert_eq!(lines, expected, "window {window_ms}");
        if window_ms == u64::MAX {
            assert!(wire.len() > 512, "{}", wire.len());
        }
        // Upstream sent one of them: each replaces the upstream's own.
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.append_header("X-RateLimit-Limit", "upstream's").unwrap();
        add_gateway_response_headers(&mut r, Some(id.as_bytes()), q, false).unwrap();
        let wire = response_wire(&r);
        assert!(!wire.contains("upstream's"), "{wire}");
        let mut lines: Vec<String> = wire
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| l.to_ascii_lowercase())
            .collect();
        lines.sort_unstable();
        let lower: Vec<String> = expected.iter().map(|l| l.to_ascii_lowercase()).collect();
        assert_eq!(lines, lower);
    }
    // A value that is not a header value is an error, whichever way.
    for absent in [true, false] {
        let mut r = ResponseHeader::build(200, None).unwrap();
        assert!(add_gateway_response_headers(&mut r, Some(b"a\r\nb"), None, absent).is_err());
    }
}
