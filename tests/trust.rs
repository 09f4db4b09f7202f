//! Trust boundaries, through the real gateway: what a client's own headers
//! may claim (an address, an id, forwarding facts, a log field) and what
//! never leaves the gateway (its API keys). Each test asserts what the
//! upstream actually received.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway

mod common;

use std::time::Duration;

use common::*;

fn sha(key: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// GET with these headers through the gateway: the headers the demo
/// upstream says it received.
async fn upstream_saw(
    c: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    let mut r = c.get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let v: serde_json::Value = r.send().await.unwrap().json().await.unwrap();
    v["headers"].clone()
}

async fn status(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut r = c.get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap().status().as_u16()
}

/// Behind a trusted load balancer every client keeps its own address
/// quota (the right-most untrusted `X-Forwarded-For` entry); from an
/// untrusted peer the header changes nothing.
#[tokio::test]
async fn the_client_behind_a_trusted_proxy_is_its_own_client() {
    let up = Upstream::start("a");
    let routes = one_route(&up);
    let quota = "[clients]\ndefault = { rpm = 2 }\n";
    let c = client();
    let trusting = Gateway::start(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &(routes.clone() + quota),
    );
    for client in ["203.0.113.1", "203.0.113.2"] {
        let xff = format!("198.51.100.9, {client}");
        for _ in 0..2 {
            assert_eq!(
                status(&c, &trusting.url("/x"), &[("x-forwarded-for", &xff)]).await,
                200
            );
        }
        assert_eq!(
            status(&c, &trusting.url("/x"), &[("x-forwarded-for", &xff)]).await,
            429
        );
    }
    let v = json_at(&c, &format!("{}?x", trusting.url("/echo"))).await;
    assert_eq!(
        v["headers"]["x-real-ip"],
        serde_json::json!(["127.0.0.1"]),
        "{v}"
    );
    let r: serde_json::Value = c
        .get(trusting.url("/echo"))
        .header("x-forwarded-for", "203.0.113.77")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["headers"]["x-real-ip"],
        serde_json::json!(["203.0.113.77"]),
        "{r}"
    );

    // Not trusted: the header is a claim, and everyone is 127.0.0.1.
    let wary = Gateway::start("", &(routes + quota));
    assert_eq!(
        status(&c, &wary.url("/x"), &[("x-forwarded-for", "203.0.113.1")]).await,
        200
    );
    assert_eq!(
        status(&c, &wary.url("/x"), &[("x-forwarded-for", "203.0.113.2")]).await,
        200
    );
    assert_eq!(
        status(&c, &wary.url("/x"), &[("x-forwarded-for", "203.0.113.3")]).await,
        429
    );
}

/// An id header equal to an address spends that id's quota, never the
/// address's; the address namespace cannot be claimed.
#[tokio::test]
async fn ids_and_addresses_are_separate_namespaces() {
    let up = Upstream::start("a");
    let rest = upstream_toml("api", &[up.addr], "")
        + &route_toml("main", "/", "api")
        + "[clients]\ndefault = { rpm = 1 }\n";
    let gw = Gateway::start("", &rest);
    let c = client();
    clear_of_window_boundary(Duration::from_secs(60), Duration::from_secs(5)); // exact counts
    assert_eq!(
        status(&c, &gw.url("/x"), &[("x-client-id", "127.0.0.1")]).await,
        200
    );
    assert_eq!(
        status(&c, &gw.url("/x"), &[("x-client-id", "127.0.0.1")]).await,
        429
    );
    // The address 127.0.0.1 still has its own request.
    assert_eq!(status(&c, &gw.url("/x"), &[]).await, 200);
    assert_eq!(status(&c, &gw.url("/x"), &[]).await, 429);
    let r = c
        .get(gw.url("/x"))
        .header("x-client-id", "ip:127.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_header");
    let stats = json_at(&c, &gw.admin_url("/api/v1/clients/ip:127.0.0.1/stats")).await;
    assert_eq!(stats["usage"]["requests_used"], 1, "{stats}");
}

/// Forwarding facts from an untrusted peer do not reach the upstream; a
/// Floodgate API key never does; an upstream's own credentials do.
#[tokio::test]
async fn what_the_upstream_receives() {
    let up = Upstream::start("a");
    let rest = upstream_toml("api", &[up.addr], "")
        + &route_toml("main", "/", "api")
        + &format!(
            "[clients]\n[clients.limits.acme]\nrpm = 100\napi_keys = [\"{}\"]\n",
            sha("floodgate-key")
        );
    let gw = Gateway::start("", &rest);
    let c = client();
    let h = upstream_saw(
        &c,
        &gw.url("/x"),
        &[
            ("authorization", "Bearer floodgate-key"),
            ("forwarded", "for=1.2.3.4;host=evil.example"),
            ("x-forwarded-host", "evil.example"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
        ],
    )
    .await;
    assert!(
        h.get("authorization").is_none(),
        "the API key went upstream: {h}"
    );
    assert!(h.get("forwarded").is_none(), "{h}");
    assert!(h.get("x-forwarded-host").is_none(), "{h}");
    assert_eq!(h["x-real-ip"], serde_json::json!(["127.0.0.1"]), "{h}");
    assert_eq!(
        h["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"]),
        "{h}"
    );
    assert_eq!(h["x-client-id"], serde_json::json!(["acme"]), "{h}");
    // A token that is not a Floodgate key is the upstream's business.
    let other = Gateway::start("", &one_route(&up));
    let h = upstream_saw(
        &c,
        &other.url("/x"),
        &[("authorization", "Bearer upstream-token")],
    )
    .await;
    assert_eq!(
        h["authorization"],
        serde_json::json!(["Bearer upstream-token"])
    );
}

/// The id header the client named itself with reaches the upstream once,
/// as the id: sent once it goes as it is; repeated, or listed in
/// `Connection` (which takes the client's line off), the gateway writes it.
#[tokio::test]
async fn the_client_id_goes_upstream_once() {
    let up = Upstream::start("a");
    let rest = upstream_toml("api", &[up.addr], "")
        + &route_toml("main", "/", "api")
        + "[clients]\n[clients.limits.bob]\nrpm = 1000\n";
    let gw = Gateway::start("", &rest);
    let received = |extra: &'static str| {
        let addr = gw.addr;
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let req = format!("GET /x HTTP/1.1\r\nHost: a\r\n{extra}\r\n");
            s.write_all(req.as_bytes()).unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            let text = String::from_utf8_lossy(&out).into_owned();
            assert!(text.starts_with("HTTP/1.1 200"), "{extra:?}: {text}");
            let body = &text[text.find('{').unwrap()..=text.rfind('}').unwrap()];
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            v["headers"]["x-client-id"].clone()
        })
    };
    for extra in [
        "Connection: close\r\nX-Client-Id: bob\r\n",
        "Connection: close\r\nX-Client-Id: bob\r\nX-Client-Id: bob\r\n",
        "Connection: close, x-client-id\r\nX-Client-Id: bob\r\n",
        "Connection: x-client-id\r\nConnection: close\r\nx-client-id: bob\r\n",
    ] {
        assert_eq!(
            received(extra).await.unwrap(),
            serde_json::json!(["bob"]),
            "{extra:?}"
        );
    }
}

/// With API keys but no client limited (the keyed client's limits off),
/// a key is still checked and never goes upstream, and a keyed client's
/// id cannot be claimed by its header (found by a hostile-client run:
/// the gateway then named no client, and passed the key on).
#[tokio::test]
async fn api_keys_stay_at_the_gateway_when_no_client_is_limited() {
    let up = Upstream::start("a");
    let rest = upstream_toml("api", &[up.addr], "")
        + &route_toml("main", "/", "api")
        + &format!(
            "[clients]\n[clients.limits.keyed]\nenabled = false\nrpm = 10\napi_keys = [\"{}\"]\n",
            sha("s3cretkey")
        );
    let gw = Gateway::start("", &rest);
    let c = client();
    let h = upstream_saw(&c, &gw.url("/x"), &[("authorization", "Bearer s3cretkey")]).await;
    assert!(
        h.get("authorization").is_none(),
        "the API key went upstream: {h}"
    );
    assert_eq!(h["x-client-id"], serde_json::json!(["keyed"]), "{h}");
    assert_eq!(
        status(&c, &gw.url("/x"), &[("authorization", "Bearer wrong")]).await,
        401
    );
    assert_eq!(
        status(&c, &gw.url("/x"), &[("x-client-id", "keyed")]).await,
        401
    );
}

/// A header value cannot forge fields of a text access-log line.
#[tokio::test]
async fn log_lines_cannot_be_forged() {
    let up = Upstream::start("a");
    let rest = upstream_toml("api", &[up.addr], "")
        + &route_toml("main", "/", "api")
        + "[clients]\ndefault = { rpm = 100 }\n";
    let gw = Gateway::start("", &rest);
    let c = client();
    let forged = "bob route=admin status=999 outcome=allowed";
    assert_eq!(
        status(&c, &gw.url("/x"), &[("x-client-id", forged)]).await,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("access") && l.contains("bob"))
        .unwrap_or_else(|| panic!("no access line:\n{log}"));
    assert!(line.contains(&format!("client=\"{forged}\"")), "{line}");
    // Outside the quoted value there is exactly one route and one status.
    let outside: String = line.split('"').step_by(2).collect();
    assert_eq!(outside.matches(" route=").count(), 1, "{line}");
    assert!(outside.contains(" route=main"), "{line}");
    assert!(!outside.contains("status=999"), "{line}");
}

/// An IPv4 client on an IPv6 listener arrives as `::ffff:a.b.c.d`: it is
/// its IPv4 address all the same, for trust (a trusted proxy's
/// `X-Forwarded-For` is kept and extended), for its address quota, and
/// in what the upstream is told. A trusted network written in the mapped
/// form means the same addresses. (Before, such a proxy was never trusted:
/// its chain was replaced by `::ffff:127.0.0.1`, found by a hostile run.)
#[tokio::test]
async fn an_ipv4_mapped_peer_is_its_ipv4_address() {
    let up = Upstream::start("a");
    let routes = one_route(&up);
    let quota = "[clients]\ndefault = { rpm = 1 }\n";
    let c = client();
    for trusted in ["127.0.0.1/32", "::ffff:127.0.0.1/128"] {
        let addr: std::net::SocketAddr = format!("[::ffff:127.0.0.1]:{}", free_port())
            .parse()
            .unwrap();
        let gw = Gateway::start_at(
            addr,
            &format!("trusted_proxies = [\"{trusted}\"]"),
            &(routes.clone() + quota),
            &[],
            &[],
        );
        let v = upstream_saw(
            &c,
            &gw.url("/echo"),
            &[
                ("x-forwarded-for", "203.0.113.5"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await;
        assert_eq!(
            v["x-forwarded-for"],
            serde_json::json!(["203.0.113.5, 127.0.0.1"]),
            "{trusted}: {v}"
        );
        assert_eq!(v["x-forwarded-proto"], serde_json::json!(["https"]), "{v}");
        assert_eq!(v["x-real-ip"], serde_json::json!(["203.0.113.5"]), "{v}");
        // Without a chain, the peer itself is the client: one quota for
        // 127.0.0.1 however it arrived, named in its IPv4 form.
        let v = upstream_saw(&c, &gw.url("/echo"), &[]).await;
        assert_eq!(
            v["x-forwarded-for"],
            serde_json::json!(["127.0.0.1"]),
            "{v}"
        );
        assert_eq!(v["x-real-ip"], serde_json::json!(["127.0.0.1"]), "{v}");
        assert_eq!(status(&c, &gw.url("/x"), &[]).await, 429);
    }
}
