//! HTTP/1 and HTTP/2 edges through the real gateway, per RFC 9112/9113:
//! pipelined requests served in order, a missing or malformed Host, framing
//! headers that would let two parsers disagree, every 400 the gateway can
//! shape in JSON with a request id, split HTTP/2 cookies, an IPv6 literal
//! in absolute form, and the reload/admin atomicity findings. Each test
//! asserts what the upstream received.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

/// The JSON bodies in a run of responses (the demo answers with one JSON
/// object per request; the gateway's refusals are JSON too).
fn bodies(text: &str) -> Vec<serde_json::Value> {
    // A response starts the text or follows the previous body.
    let starts: Vec<usize> = text
        .match_indices("HTTP/1.")
        .map(|(i, _)| i)
        .filter(|i| *i == 0 || matches!(text.as_bytes()[i - 1], b'}' | b'\n'))
        .chain(std::iter::once(text.len()))
        .collect();
    starts
        .windows(2)
        .filter_map(|w| {
            let r = &text[w[0]..w[1]];
            let body = r.split_once("\r\n\r\n")?.1;
            let end = body.rfind('}')?;
            serde_json::from_str(&body[..=end]).ok()
        })
        .collect()
}

fn gateway(up: &Upstream) -> Gateway {
    gateway_to(up.addr)
}

/// A gateway whose one route goes to the upstream at `addr`.
fn gateway_to(addr: SocketAddr) -> Gateway {
    Gateway::start(
        "",
        &(upstream_toml("api", &[addr], "") + &route_toml("main", "/", "api")),
    )
}

/// [`gateway_to`] with the forward proxy on too; its address beside.
fn with_forward(addr: SocketAddr) -> (Gateway, SocketAddr) {
    let port = free_port();
    let mut gw = Gateway::start(
        "",
        &(upstream_toml("api", &[addr], "")
            + &route_toml("main", "/", "api")
            + &format!("[forward_proxy]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n")),
    );
    let forward: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_port(forward, &mut gw.proc, "forward proxy");
    (gw, forward)
}

/// An upstream of raw bytes on a loopback port: to each request header it
/// reads on a connection it writes `answer(head)`; with `keep_alive` it
/// reads the next request on the same connection, else it closes a second
/// after its first answer (time for the gateway to relay what follows).
fn raw_upstream(keep_alive: bool, answer: fn(&str) -> &'static [u8]) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut buf) {
                            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                    seen.drain(..end + 4);
                    if conn.write_all(answer(&head)).is_err() || !keep_alive {
                        std::thread::sleep(Duration::from_secs(1));
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `text` answers the requests for `paths` with a 200 each, in order, and
/// the demo upstream `up` received exactly those.
async fn served_in_order(up: &Upstream, text: &str, paths: &[&str]) {
    assert_eq!(text.matches("HTTP/1.1 200").count(), paths.len(), "{text}");
    let seen: Vec<_> = bodies(text).iter().map(|b| b["path"].clone()).collect();
    assert_eq!(seen, paths, "{text}");
    let stats = json_at(&client(), &format!("http://{}/__stats", up.addr)).await;
    assert_eq!(stats["requests"], paths.len());
}

/// Finding 7: two GETs in one write are both answered, in order, and both
/// reach the upstream.
#[tokio::test]
async fn pipelined_requests_are_served_in_order() {
    let up = Upstream::start("a");
    let gw = gateway(&up);
    let text = exchange(
        gw.addr,
        b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    served_in_order(&up, &text, &["/first", "/second"]).await;
}

/// Found by a hostile-client run: `close` on a second `Connection` line
/// was ignored (Pingora read the first), the connection kept open and a
/// pipelined request after it served. (Pingora reads every line since
/// stop 28: vendor/README.md.)
#[tokio::test]
async fn close_on_a_later_connection_line_closes() {
    let up = Upstream::start("a");
    let gw = gateway(&up);
    let started = std::time::Instant::now();
    let text = exchange(
        gw.addr,
        b"GET /first HTTP/1.1\r\nHost: a\r\nConnection: x-foo\r\nConnection: close\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{text}");
    let stats = json_at(&client(), &format!("http://{}/__stats", up.addr)).await;
    assert_eq!(stats["requests"], 1);
}

/// Finding 7: HTTP/1.1 without exactly one well-formed Host, and framing
/// headers two parsers could read differently, are refused with a JSON
/// 400 carrying the client's request id; nothing reaches the upstream.
#[tokio::test]
async fn malformed_requests_get_json_400_with_a_request_id() {
    let up = Upstream::start("a");
    let gw = gateway(&up);
    let many = "X-A: 1\r\n".repeat(300);
    let cases: Vec<(String, u16)> = vec![
        ("GET / HTTP/1.1\r\n".into(), 400),
        ("GET / HTTP/1.1\r\nHost: a b\r\n".into(), 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n".into(), 400),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n".into(),
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n".into(),
            400,
        ),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\x7fb\r\n".into(), 400),
        // Found by a hostile-client run: a control character or a tab in
        // the target went upstream percent-encoded.
        ("GET /a\rb HTTP/1.1\r\nHost: a\r\n".into(), 400),
        ("GET /a\x01b HTTP/1.1\r\nHost: a\r\n".into(), 400),
        ("GET /a\tb HTTP/1.1\r\nHost: a\r\n".into(), 400),
        // Found by a hostile-client run: a target `http`'s URI does not
        // take got Pingora's plain-text 400.
        ("GET /a<b> HTTP/1.1\r\nHost: a\r\n".into(), 400),
        ("GET /a?q=\"x\" HTTP/1.1\r\nHost: a\r\n".into(), 400),
        // Found by a hostile-client run: a CR alone before the request
        // line got Pingora's plain-text 400.
        ("\r\rGET / HTTP/1.1\r\nHost: a\r\n".into(), 400),
        ("\r\n\rGET / HTTP/1.1\r\nHost: a\r\n".into(), 400),
        // Found by a hostile-client run: an Upgrade that Connection does
        // not name opened a tunnel; Connection naming a header the gateway
        // sets was refused by Pingora only after admission, as "could not
        // be read".
        (
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n".into(),
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nUpgrade: websocket\r\n".into(),
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Forwarded-For\r\n".into(),
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: \"x\"\r\n".into(),
            400,
        ),
        (format!("GET / HTTP/1.1\r\nHost: a\r\n{many}"), 431),
        // Found by a hostile-client run: `gzip, chunked` reached the
        // upstream as `chunked`, the body still gzipped.
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n".into(),
            501,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n".into(),
            501,
        ),
    ];
    for (head, status) in cases {
        let raw = format!("{head}X-Request-Id: case-7\r\n\r\n");
        let text = exchange(gw.addr, raw.as_bytes());
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}")),
            "{head:?}: {text}"
        );
        let lower = text.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/json"), "{text}");
        assert!(lower.contains("x-request-id: case-7"), "{text}");
        // Found by a hostile-client run: the guard's refusals had no Date.
        assert_eq!(lower.matches("\r\ndate: ").count(), 1, "{text}");
        assert!(lower.contains(" gmt\r\n"), "{text}");
        let body = &bodies(&text)[0];
        let code = match status {
            400 => "bad_request",
            501 => "not_implemented",
            _ => "headers_too_large",
        };
        assert_eq!(body["error"], code, "{text}");
    }
    // Without an id of its own, the client gets a fresh one.
    let text = exchange(gw.addr, b"GET / HTTP/1.1\r\n\r\n");
    assert!(
        text.to_ascii_lowercase().contains("x-request-id: "),
        "{text}"
    );
    // HTTP/1.0 needs no Host; upstream it goes as HTTP/1.1, which does:
    // the backend's address (found by a hostile-client run: it went
    // without one).
    let text = exchange(gw.addr, b"GET /ten HTTP/1.0\r\n\r\n");
    assert!(
        text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"),
        "{text}"
    );
    assert_eq!(
        bodies(&text)[0]["headers"]["host"],
        serde_json::json!([up.addr.to_string()]),
        "{text}"
    );
    let stats = json_at(&client(), &format!("http://{}/__stats", up.addr)).await;
    assert_eq!(
        stats["requests"], 1,
        "only the HTTP/1.0 request went upstream"
    );
}

/// An HTTP/1.0 client gets a streamed (chunked upstream) answer as plain
/// bytes to the end of the connection: no `Transfer-Encoding`, no chunk
/// sizes in its body (RFC 9112 §6.1; found by a hostile-client run: it got
/// both). An HTTP/1.1 client still gets it chunked on a kept connection.
#[tokio::test]
async fn an_http10_client_gets_no_chunked_body() {
    let up = Upstream::start("a");
    let gw = gateway(&up);
    // The demo streams a chat completion (of unknown length: chunked to
    // the HTTP/1.1 request that goes upstream).
    let json = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let ask = |version: &str, extra: &str| {
        format!(
            "POST /v1/chat/completions?words=3 {version}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        )
    };
    let text = exchange(gw.addr, ask("HTTP/1.0", "").as_bytes());
    let (lower, body) = answer_parts(&text);
    assert!(
        lower.starts_with("http/1.1 200") || lower.starts_with("http/1.0 200"),
        "{text}"
    );
    assert!(!lower.contains("transfer-encoding"), "{text}");
    assert!(!lower.contains("content-length"), "{text}");
    assert!(
        body.starts_with("data: "),
        "no chunk size before the body: {text}"
    );
    assert!(body.trim_end().ends_with("data: [DONE]"), "{text}");
    // HTTP/1.1: chunked, as before.
    let text = exchange(
        gw.addr,
        ask("HTTP/1.1", "Host: a\r\nConnection: close\r\n").as_bytes(),
    );
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
}

/// Found by a hostile-client run: an HTTP/1.0 client of an upstream's
/// chunked answer with trailer fields still got its `Trailer` line, whose
/// fields cannot come without chunked framing. It gets the body as it is,
/// no framing fields and no `Trailer`, and what the upstream sent.
#[tokio::test]
async fn an_http10_client_gets_no_trailer_line() {
    let addr = raw_upstream(false, |_| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nX-U: 1\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 9\r\n\r\n"
    });
    let gw = gateway_to(addr);
    let text = exchange(gw.addr, b"GET /t HTTP/1.0\r\n\r\n");
    let (lower, body) = answer_parts(&text);
    assert!(lower.contains(" 200 "), "{text}");
    assert!(lower.contains("x-u: 1"), "{text}");
    for gone in ["transfer-encoding", "content-length", "trailer"] {
        assert!(!lower.contains(gone), "{gone}: {text}");
    }
    assert_eq!(body, "hello", "{text}");
}

/// Found by hostile-client runs: an upstream's `close` on a second
/// `Connection` line was ignored (Pingora read the first), and so was a
/// `close` beside a token that is not UTF-8 (Pingora read such a value as
/// empty); the next request went onto the connection the upstream was
/// closing: a 502. It goes to a new connection now, through both proxies.
#[tokio::test]
async fn an_upstream_close_on_a_later_connection_line_is_heeded() {
    // Each answers each connection's first request and closes it a second
    // later, reading nothing more from it.
    let answers: [fn(&str) -> &'static [u8]; 2] = [
        |_| {
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        },
        |_| b"HTTP/1.1 200 OK\r\nConnection: close, \xe9t\xe9\r\nContent-Length: 2\r\n\r\nok",
    ];
    for answer in answers {
        upstream_close_is_heeded(raw_upstream(false, answer));
    }
}

fn upstream_close_is_heeded(addr: SocketAddr) {
    let (gw, forward) = with_forward(addr);
    for (to, target) in [
        (gw.addr, "/t".to_string()),
        (forward, format!("http://{addr}/t")),
    ] {
        let mut s = TcpStream::connect(to).unwrap();
        for i in 0..3 {
            // A POST: Pingora retries a GET that finds its reused
            // connection closed, which hides the fault behind a delay.
            s.write_all(
                format!(
                    "POST {target}?{i} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5\r\n\r\nhello"
                )
                .as_bytes(),
            )
            .unwrap();
            let text = common::read_answer(&mut s);
            assert!(text.starts_with("HTTP/1.1 200 "), "{target} #{i}: {text}");
            assert!(text.ends_with("\r\n\r\nok"), "{target} #{i}: {text}");
        }
    }
}

/// The gateway answers in its own HTTP version (RFC 9110 §2.5), through
/// both proxies (found by a hostile-client run: an upstream's `HTTP/1.0
/// 200 OK` reached the client as it was).
#[tokio::test]
async fn an_http10_upstream_is_answered_for_in_http11() {
    let addr = raw_upstream(false, |_| b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let (gw, forward) = with_forward(addr);
    let absolute =
        format!("GET http://{addr}/t HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    for (to, raw) in [
        (
            gw.addr,
            b"GET /t HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (forward, absolute.into_bytes()),
    ] {
        let text = exchange(to, &raw);
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        assert!(text.ends_with("\r\n\r\nok"), "{text}");
    }
}

/// An answer whose body ends with the connection (a transfer coding not
/// ending in chunked, which Pingora passes on as it is) says `Connection:
/// close`, and closes the client's connection after it (found by a
/// hostile-client run: it said `keep-alive`). (Without any framing field
/// Pingora chunks the body for an HTTP/1.1 client, and keeps the
/// connection.)
#[tokio::test]
async fn a_close_delimited_answer_says_close() {
    let addr = raw_upstream(false, |_| {
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: gzip\r\n\r\nbody"
    });
    let gw = gateway_to(addr);
    let text = exchange(gw.addr, b"GET /t HTTP/1.1\r\nHost: a\r\n\r\n");
    let (lower, body) = answer_parts(&text);
    assert!(lower.starts_with("http/1.1 200 "), "{text}");
    assert_eq!(lower.matches("\r\nconnection: ").count(), 1, "{text}");
    assert!(lower.contains("\r\nconnection: close"), "{text}");
    assert_eq!(body, "body", "{text}");
}

/// Found by a hostile-client run: an upstream's `Transfer-Encoding:
/// chunked,` (an empty list element after it) was read to the connection's
/// end by Pingora while the client, given the header as it was, read it as
/// chunked: the upstream could append an answer of its own to a request
/// the client pipelined. `chunked,` is chunked (RFC 9110 §5.6.1).
#[tokio::test]
async fn an_empty_transfer_coding_element_smuggles_no_answer() {
    let addr = raw_upstream(false, |_| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nSMUGGLE"
    });
    let gw = gateway_to(addr);
    let text = exchange(
        gw.addr,
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(!text.contains("SMUGGLE"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 ").count(), 2, "{text}");
    assert_eq!(
        text.matches("\r\n5\r\nhello\r\n0\r\n\r\n").count(),
        2,
        "{text}"
    );
}

/// Found by a hostile-client run: an upstream's `Transfer-Encoding: gzip,
/// chunked` reached an HTTP/1.0 client unchunked, the bytes still gzipped
/// and unlabelled. No transfer coding may reach such a client, and the
/// gateway undoes none but chunked: a 502. An HTTP/1.1 client gets it.
#[tokio::test]
async fn a_coded_answer_is_refused_to_an_http10_client() {
    let addr = raw_upstream(false, |_| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    });
    let gw = gateway_to(addr);
    let text = exchange(gw.addr, b"GET /t HTTP/1.0\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
    assert!(!text.contains("hello"), "{text}");
    // An answer without a body (HEAD) needs no decoding: it goes, unframed.
    let text = exchange(gw.addr, b"HEAD /t HTTP/1.0\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
    let text = exchange(
        gw.addr,
        b"GET /t HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("hello"), "{text}");
}

/// No interim (1xx) answer reaches an HTTP/1.0 client (RFC 9110 §15.2),
/// through the reverse proxy or the forward proxy's absolute form (found
/// by a hostile-client run: the client got the upstream's `103`); an
/// HTTP/1.1 client still gets it before its answer.
#[tokio::test]
async fn an_http10_client_gets_no_interim_answer() {
    let addr = raw_upstream(false, |_| {
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    });
    let (gw, forward) = with_forward(addr);
    let absolute = format!("GET http://{addr}/t HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    for (to, raw) in [
        (gw.addr, b"GET /t HTTP/1.0\r\n\r\n".to_vec()),
        (forward, absolute.into_bytes()),
    ] {
        let text = exchange(to, &raw);
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        assert!(!text.to_ascii_lowercase().contains("link:"), "{text}");
        assert!(!text.contains(" 103 "), "{text}");
        assert!(text.ends_with("\r\n\r\nok"), "{text}");
    }
    let text = exchange(
        gw.addr,
        b"GET /t HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 103 "), "{text}");
    assert!(text.contains("\r\n\r\nHTTP/1.1 200 "), "{text}");
}

/// Finding 7: equal duplicate `Content-Length` values and leading zeros
/// reach the upstream as one canonical value.
#[tokio::test]
async fn framing_headers_are_normalised() {
    let up = Upstream::start("a");
    let gw = gateway(&up);
    let text = exchange(
        gw.addr,
        b"POST /dup HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    let v = &bodies(&text)[0];
    assert_eq!(
        v["headers"]["content-length"],
        serde_json::json!(["3"]),
        "{text}"
    );
    let text = exchange(
        gw.addr,
        b"POST /zeros HTTP/1.1\r\nHost: a\r\nContent-Length: 0010\r\nConnection: close\r\n\r\n0123456789",
    );
    let v = &bodies(&text)[0];
    assert_eq!(
        v["headers"]["content-length"],
        serde_json::json!(["10"]),
        "{text}"
    );
}

/// Writes `raw` (one request, no `Connection: close`) and reads one
/// answer: its header and a `Content-Length` body.
fn one_answer(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(raw).unwrap();
    read_answer(&mut s)
}

/// Every name Pingora's standard upstream request policy removes, sent
/// on its own without `Connection` (so no other name sends the request
/// through that policy): none reaches the upstream. The gateway skips
/// the policy on a request that carries none of those names, so a name
/// missing from that check would go upstream here (`HTTP2-Settings`,
/// which the gateway's own stripping does not list, did when it was
/// left out of the check).
#[tokio::test]
async fn hop_by_hop_names_sent_alone_never_reach_the_upstream() {
    let up = Upstream::start("a");
    let gw = gateway(&up);
    let lines = [
        ("keep-alive", "Keep-Alive: timeout=5"),
        ("proxy-connection", "Proxy-Connection: keep-alive"),
        ("proxy-authenticate", "Proxy-Authenticate: Basic"),
        ("proxy-authorization", "Proxy-Authorization: Basic eDp5"),
        ("te", "TE: trailers"),
        ("trailer", "Trailer: X-Sum"),
        ("http2-settings", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"),
        ("connection", "Connection: keep-alive"),
    ];
    for (name, line) in lines {
        let raw = format!("GET /h HTTP/1.1\r\nHost: a\r\n{line}\r\nX-Kept: yes\r\n\r\n");
        let text = one_answer(gw.addr, raw.as_bytes());
        assert!(text.starts_with("HTTP/1.1 200"), "{line}: {text}");
        let h = &bodies(&text)[0]["headers"];
        assert!(h.get(name).is_none(), "{line} went upstream: {h}");
        assert_eq!(h["x-kept"], serde_json::json!(["yes"]), "{line}: {h}");
    }
    // A request that carries none of them goes up whole.
    let text = one_answer(
        gw.addr,
        b"GET /h HTTP/1.1\r\nHost: a\r\nX-Kept: yes\r\nAccept: */*\r\n\r\n",
    );
    let h = &bodies(&text)[0]["headers"];
    assert_eq!(h["x-kept"], serde_json::json!(["yes"]), "{h}");
    assert_eq!(h["accept"], serde_json::json!(["*/*"]), "{h}");
    assert_eq!(h["host"], serde_json::json!(["a"]), "{h}");
}

/// Found by a hostile-client run: with a body over `request_buffer_size`
/// that came whole with its header, the next pipelined request, sent
/// while the first was still being answered, ended the connection mid
/// answer (the fence answered Pingora's read with nothing) and was never
/// served.
#[tokio::test]
async fn a_request_pipelined_behind_a_streamed_body_waits_its_turn() {
    let up = Upstream::start("a");
    let gw = Gateway::start("request_buffer_size = \"0\"", &one_route(&up));
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /slow?delay_ms=600 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let got = bodies(&text);
    assert_eq!(got.len(), 2, "{text}");
    assert_eq!(got[0]["path"], "/slow", "{text}");
    assert_eq!(got[0]["body_bytes"], 5, "{text}");
    assert_eq!(got[1]["path"], "/next", "{text}");
    let stats = json_at(&client(), &format!("http://{}/__stats", up.addr)).await;
    assert_eq!(stats["requests"], 2);
}

/// Found by a hostile-client run: what described the upstream's
/// connection in its answer (`Keep-Alive`, names its `Connection` listed)
/// reached the client.
#[tokio::test]
async fn an_upstream_s_hop_by_hop_fields_stay_at_the_gateway() {
    let up = Upstream::start("a");
    let gw = gateway(&up);
    let path = "/x?header=Connection:X-Secret&header=X-Secret:s&header=Keep-Alive:timeout5\
                &header=Proxy-Connection:keep-alive&header=X-Kept:k";
    let raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let text = exchange(gw.addr, raw.as_bytes());
    let (head, _) = answer_parts(&text);
    assert!(head.starts_with("http/1.1 200"), "{text}");
    for gone in ["x-secret:", "keep-alive:", "proxy-connection:"] {
        assert!(!head.contains(gone), "{gone} reached the client: {text}");
    }
    assert!(head.contains("x-kept: k"), "{text}");
    assert!(head.contains("connection: close"), "{text}");
}

/// Found by a hostile-upstream run: an upstream that answered a plain
/// request with `101 Switching Protocols` had it and the bytes after it
/// relayed to the client. The client gets a 502 instead, and none of
/// those bytes; a request that asked for the switch still gets it.
#[tokio::test]
async fn an_upstream_that_switches_protocols_unasked_fails() {
    let addr = raw_upstream(false, |_| {
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nRAW-TUNNEL-BYTES"
    });
    let gw = gateway_to(addr);
    let text = exchange(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(!text.contains("RAW-TUNNEL-BYTES"), "{text}");
    assert_eq!(bodies(&text)[0]["error"], "upstream_error", "{text}");
    // Asked for, the same answer opens the tunnel.
    let text = exchange(
        gw.addr,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.ends_with("RAW-TUNNEL-BYTES"), "{text}");
}

/// Found by a hostile-client run: an upstream that sent an interim answer
/// (a 103) and then failed left the client with the 103 and a closed
/// connection, no final answer. The final answer follows the 103: a JSON
/// 502.
#[tokio::test]
async fn an_upstream_failing_after_an_interim_answer_gets_a_502_after_it() {
    let addr = raw_upstream(false, |_| {
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    });
    let gw = gateway_to(addr);
    let text = exchange(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 103"), "{text}");
    let last = &text[text.rfind("HTTP/1.1 ").unwrap()..];
    assert!(last.starts_with("HTTP/1.1 502"), "{text}");
    assert_eq!(bodies(last)[0]["error"], "upstream_error", "{text}");
}

/// Found by a hostile-client run: an upstream's `HTTP/1.0 101` (HTTP/1.0
/// has no 101) reached the client as a 101, but Pingora opened no tunnel:
/// it waited for a final answer, and the client met silence until the
/// read timeout. The client gets a 502 at once.
#[tokio::test]
async fn an_http_1_0_switch_of_protocols_fails() {
    let addr = raw_upstream(true, |_| {
        b"HTTP/1.0 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    });
    let gw = gateway_to(addr);
    let start = std::time::Instant::now();
    let text = exchange(
        gw.addr,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert_eq!(bodies(&text)[0]["error"], "upstream_error", "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

/// Found by a hostile-client run: a request pipelined behind an upgrade
/// request that the upstream declined (a 200, not a 101) was taken for
/// data sent after the first request, and the client got a JSON 400 and
/// a closed connection for it. Both are answered, in order, and both
/// reach the upstream.
#[tokio::test]
async fn a_request_pipelined_behind_a_declined_upgrade_is_served() {
    let up = Upstream::start("a");
    let gw = gateway(&up);
    let text = exchange(
        gw.addr,
        b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\
          GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    served_in_order(&up, &text, &["/up", "/after"]).await;
}

/// Found by a hostile-client run: bytes of the new protocol a client sent
/// right behind its upgrade request, before the 101, failed the request
/// (a JSON 400). They wait for the answer, then reach the upstream first,
/// in order, before what the client sends after the switch.
#[tokio::test]
async fn bytes_sent_before_the_101_reach_the_upstream_after_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_tx, got) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The request's connection: the first that brings a header (the
        // gateway's health checks connect and close).
        let mut buf = [0u8; 1024];
        let (mut conn, mut seen, end) = loop {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut seen = Vec::new();
            while let Ok(n @ 1..) = conn.read(&mut buf) {
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break (conn, seen, end + 4);
            }
        };
        // The early bytes have long reached the gateway when it answers.
        std::thread::sleep(Duration::from_millis(300));
        conn.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        let mut after = seen.split_off(end);
        while after.len() < b"EARLY-LATE".len() {
            match conn.read(&mut buf) {
                Ok(n) if n > 0 => after.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        conn.write_all(&[b"ECHO:", &after[..]].concat()).unwrap();
        got_tx.send(after).unwrap();
    });
    let gw = gateway_to(addr);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nEARLY-",
    )
    .unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    while !text.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&text));
        text.extend_from_slice(&buf[..n]);
    }
    assert!(
        text.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    s.write_all(b"LATE").unwrap();
    while !text.ends_with(b"ECHO:EARLY-LATE") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&text));
        text.extend_from_slice(&buf[..n]);
    }
    let after = got.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        after, b"EARLY-LATE",
        "what the upstream read after the header"
    );
}

/// Found by a hostile-client run: an upstream's `Transfer-Encoding` (or
/// `Content-Length`) on a 204 reached an HTTP/1.1 client, which a 204 may
/// not carry. Both are gone, the connection stays usable, and a 304 keeps
/// its `Content-Length` (it describes the 200 it stands for).
#[tokio::test]
async fn a_204_carries_no_framing_fields() {
    let addr = raw_upstream(true, |head| {
        if head.starts_with("GET /te") {
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\nX-U: 1\r\n\r\n"
        } else if head.starts_with("GET /cl") {
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-U: 2\r\n\r\n"
        } else {
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\nX-U: 3\r\n\r\n"
        }
    });
    let gw = gateway_to(addr);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    for (path, mark) in [("/te", "x-u: 1"), ("/cl", "x-u: 2"), ("/te", "x-u: 1")] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        let text = read_answer(&mut s).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 204"), "{text}");
        assert!(text.contains(mark), "{text}");
        assert!(!text.contains("transfer-encoding"), "{text}");
        assert!(!text.contains("content-length"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "no body: {text}");
    }
    s.write_all(b"GET /nm HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 304"), "{text}");
    assert!(text.contains("content-length: 7"), "{text}");
}

/// A gateway with a TLS listener (HTTP/2) in front of `upstream`, and an
/// HTTP/2 client that trusts it: the gateway, the client, the listener's
/// port, and the directory of its certificate (kept for as long as it).
fn h2_gateway(upstream: SocketAddr) -> (Gateway, reqwest::Client, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (cert, key) = ca.issue(dir.path(), "gw", &["127.0.0.1"]);
    let tls: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut gw = Gateway::start(
        &format!(
            "\n[[server.tls]]\nlisten = \"{tls}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        &(upstream_toml("api", &[upstream], "") + &route_toml("main", "/", "api")),
    );
    wait_for_port(tls, &mut gw.proc, "tls listener");
    let c = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
        .http2_prior_knowledge()
        .build()
        .unwrap();
    (gw, c, tls.port(), dir)
}

/// Finding 7: HTTP/2 cookies sent as separate fields reach an HTTP/1
/// upstream as one `Cookie` header (RFC 9113 §8.2.3).
#[tokio::test]
async fn split_http2_cookies_are_joined() {
    let up = Upstream::start("a");
    let (_gw, c, port, _dir) = h2_gateway(up.addr);
    let r = c
        .get(format!("https://127.0.0.1:{port}/echo"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["headers"]["cookie"],
        serde_json::json!(["a=1; b=2"]),
        "{v}"
    );
}

/// Found by a hostile-client run: an HTTP/2 request body of no declared
/// length, ended by an empty DATA frame (END_STREAM), reached an HTTP/1
/// upstream ended twice (`0\r\n\r\n0\r\n\r\n`): Pingora wrote the empty last
/// piece as a chunk of size 0, which is the end, then ended the body
/// again, and the upstream read the second end as another request. The
/// upstream must receive the body chunked and ended once.
#[tokio::test]
async fn an_http2_body_of_no_length_is_ended_once_upstream() {
    // An upstream that answers once the body has ended, and reports every
    // byte its connection carried once it has gone quiet.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_millis(700)));
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                let mut answered = false;
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    seen.extend_from_slice(&buf[..n]);
                    if !answered && seen.ends_with(b"0\r\n\r\n") {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                        answered = true;
                    }
                }
                let _ = tx.send(seen);
            });
        }
    });
    let (_gw, c, port, _dir) = h2_gateway(addr);
    // Two pieces with a pause between them: the client learns that the
    // body has ended only after the last piece, and says so with an empty
    // DATA frame.
    let pieces = futures::stream::unfold(0, |i| async move {
        if i == 2 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let piece = if i == 0 { "abc" } else { "def" };
        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(piece)), i + 1))
    });
    let r = c
        .post(format!("https://127.0.0.1:{port}/up"))
        .body(reqwest::Body::wrap_stream(pieces))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    // The request's connection (a health check's carries nothing).
    let seen = tokio::task::spawn_blocking(move || loop {
        let seen = rx.recv_timeout(Duration::from_secs(10));
        if seen.as_ref().map_or(true, |s| !s.is_empty()) {
            return seen;
        }
    })
    .await
    .unwrap()
    .expect("the upstream's connection");
    let text = String::from_utf8_lossy(&seen).into_owned();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    assert_eq!(body, "3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", "{text:?}");
}

/// Finding 7: an absolute-form request to an IPv6 literal is forwarded.
#[tokio::test]
async fn absolute_form_to_an_ipv6_literal() {
    let port = free_port();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut up = Proc::spawn_bin(
        &demo_bin(),
        &["--listen", &v6.to_string(), "--name", "v6"],
        &[],
        dir.path().join("demo.log"),
    );
    wait_for_port(v6, &mut up, "demo upstream on [::1]");
    let dummy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (_gw, proxy) = with_forward(dummy);
    let raw = format!(
        "GET http://[::1]:{port}/v6 HTTP/1.1\r\nHost: [::1]:{port}\r\nConnection: close\r\n\r\n"
    );
    let text = exchange(proxy, raw.as_bytes());
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let v = &bodies(&text)[0];
    assert_eq!(
        (v["server"].as_str(), v["path"].as_str()),
        (Some("v6"), Some("/v6")),
        "{text}"
    );
}

/// Finding 8: a host cap from the admin API is bounded (the largest
/// integer is a 400, not an "unset" marker), and a rejected reload leaves
/// the running caps as they were.
#[tokio::test]
async fn admin_caps_are_bounded_and_a_rejected_reload_changes_nothing() {
    let up = Upstream::start("a");
    let rest =
        upstream_toml("api", &[up.addr], "max_connections = 2") + &route_toml("main", "/", "api");
    let gw = Gateway::start("", &rest);
    let c = client();
    let host = up.addr.to_string();
    let r = c
        .put(gw.admin_url(&format!("/api/v1/hosts/{host}")))
        .body(r#"{"max_connections": 18446744073709551615}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let cap_of = |v: serde_json::Value| {
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == host.as_str())
            .map(|h| h["max_connections"].clone())
            .unwrap()
    };
    assert_eq!(cap_of(json_at(&c, &gw.admin_url("/api/v1/hosts")).await), 2);

    // A reload whose file raises the cap but is invalid elsewhere.
    let bad = upstream_toml("api", &[up.addr], "max_connections = 50")
        + &route_toml("main", "/", "api")
        + &route_toml("broken", "/b", "no-such-upstream");
    gw.write_config("", &bad);
    let r = c.post(gw.admin_url("/api/v1/reload")).send().await.unwrap();
    assert_eq!(r.status(), 400, "{}", r.text().await.unwrap());
    assert_eq!(cap_of(json_at(&c, &gw.admin_url("/api/v1/hosts")).await), 2);
    let results = burst(&gw.url("/x?delay_ms=500"), 4).await;
    assert_eq!(
        results.iter().filter(|r| r.0 == 200).count(),
        2,
        "{results:?}"
    );
}

/// Finding 8: an admin change that cannot be persisted is not applied.
#[tokio::test]
async fn an_admin_change_that_cannot_persist_is_not_applied() {
    let up = Upstream::start("a");
    let rest =
        upstream_toml("api", &[up.addr], "max_connections = 2") + &route_toml("main", "/", "api");
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("state.json");
    let gw = Gateway::start(&format!("state_file = \"{}\"", state.display()), &rest);
    // The state file's directory disappears: no write can succeed.
    drop(state_dir);
    let c = client();
    let host = up.addr.to_string();
    let r = c
        .put(gw.admin_url(&format!("/api/v1/hosts/{host}")))
        .body(r#"{"max_connections": 7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500, "{}", r.text().await.unwrap());
    let hosts = json_at(&c, &gw.admin_url("/api/v1/hosts")).await;
    let cap = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host.as_str())
        .map(|h| h["max_connections"].clone());
    assert_eq!(cap, Some(serde_json::json!(2)), "{hosts}");
}

/// A request pipelined while the one before it is still being answered
/// waits its turn: both are served, in order, each once upstream — also
/// after a body, and after a body too large to buffer.
#[tokio::test]
async fn a_request_pipelined_during_an_answer_waits_its_turn() {
    let up = Upstream::start("a");
    let gw = gateway(&up);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /slow?delay_ms=500 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    s.write_all(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // A body larger than request_buffer_size (it streams), with the next
    // request in the same write.
    let big = 2 * 1024 * 1024;
    let mut raw =
        format!("POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: {big}\r\n\r\n").into_bytes();
    raw.extend(std::iter::repeat_n(b'x', big));
    raw.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    s.write_all(&raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let got: Vec<_> = bodies(&text)
        .iter()
        .map(|b| {
            (
                b["path"].as_str().unwrap_or("").to_string(),
                b["body_bytes"].as_u64(),
            )
        })
        .collect();
    let want = vec![
        ("/slow".to_string(), Some(3)),
        ("/second".to_string(), Some(0)),
        ("/big".to_string(), Some(big as u64)),
        ("/last".to_string(), Some(0)),
    ];
    assert_eq!(got, want, "{}", &text[..text.len().min(2000)]);
    let stats = json_at(&client(), &format!("http://{}/__stats", up.addr)).await;
    assert_eq!(stats["requests"], 4, "each request once upstream");

    // 200 GETs in one write.
    let many = "GET /p HTTP/1.1\r\nHost: a\r\n\r\n".repeat(199)
        + "GET /p HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let text = exchange(gw.addr, many.as_bytes());
    assert_eq!(text.matches("HTTP/1.1 200").count(), 200);
}

/// Bodies larger than what Pingora takes as a pre-read prefix (1 MiB) and
/// up to request_buffer_size are buffered and forwarded whole, with a
/// length or chunked.
#[tokio::test]
async fn bodies_over_a_mebibyte_reach_the_upstream_whole() {
    let up = Upstream::start("a");
    let gw = Gateway::start("request_buffer_size = \"8MiB\"", &one_route(&up));
    for size in [1024 * 1024, 1024 * 1024 + 1, 7 * 1024 * 1024] {
        let mut raw = format!(
            "POST /len HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        raw.extend(std::iter::repeat_n(b'y', size));
        let text = exchange(gw.addr, &raw);
        assert_eq!(
            bodies(&text)[0]["body_bytes"],
            size,
            "{}",
            &text[..text.len().min(300)]
        );
    }
    let mut raw =
        b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..48 {
        raw.extend_from_slice(format!("{:x}\r\n", 65536).as_bytes());
        raw.extend(std::iter::repeat_n(b'z', 65536));
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let text = exchange(gw.addr, &raw);
    assert_eq!(
        bodies(&text)[0]["body_bytes"],
        48 * 65536,
        "{}",
        &text[..text.len().min(300)]
    );
}

/// `Expect: 100-continue` is answered once (however many times it is
/// asked) and not passed on; an HTTP/1.0 client is not asked to wait.
/// CONNECT on the reverse proxy is a JSON 405, and a connection that sends
/// nothing is closed without an answer.
#[tokio::test]
async fn expect_connect_and_silence() {
    let up = Upstream::start("a");
    let gw = Gateway::start("header_timeout = \"1s\"", &one_route(&up));
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PUT /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 25];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"ok").unwrap();
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    assert!(!rest.contains("100 Continue"), "{rest}");
    let v = &bodies(&rest)[0];
    assert!(v["headers"].get("expect").is_none(), "{rest}");
    assert_eq!(v["body_bytes"], 2);
    let text = exchange(
        gw.addr,
        b"PUT /e HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    );
    assert!(!text.contains("100 Continue"), "{text}");

    let text = exchange(gw.addr, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert_eq!(bodies(&text)[0]["error"], "method_not_allowed");

    let started = std::time::Instant::now();
    let text = exchange(gw.addr, b"");
    assert_eq!(text, "", "nothing sent, nothing answered");
    assert!(started.elapsed() < Duration::from_secs(5));
}
