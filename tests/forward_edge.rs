//! The forward proxy against a hostile client: every alias of a denied
//! address is denied, the gateway's own listeners are unreachable through
//! it, its counters are its own (no alias escapes a cap, no tunnel eats a
//! backend's slots), and refused destinations leave nothing behind.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

fn forward_gateway(fp: &str, rest: &str) -> (Gateway, SocketAddr) {
    let port = free_port();
    let rest = rest.to_string()
        + &format!("[forward_proxy]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n{fp}\n");
    let mut gw = Gateway::start("", &rest);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_port(addr, &mut gw.proc, "forward proxy");
    (gw, addr)
}

fn unused_route() -> String {
    let dummy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    upstream_toml("unused", &[dummy], "") + &route_toml("main", "/", "unused")
}

/// Opens a CONNECT tunnel; returns the socket and the status line.
fn connect(proxy: SocketAddr, target: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    (s, text.lines().next().unwrap_or("").to_string())
}

async fn status_of(proxy: SocketAddr, target: String) -> String {
    tokio::task::spawn_blocking(move || connect(proxy, &target).1)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_alias_of_a_denied_address_is_denied() {
    let up = Upstream::start("loopback-service");
    let port = up.addr.port();
    let (gw, proxy) = forward_gateway(
        "deny_hosts = [\"127.0.0.0/8\", \"localhost\", \"169.254.0.0/16\", \"::1\"]",
        &unused_route(),
    );
    for target in [
        format!("0.0.0.0:{port}"),
        format!("0:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("[::ffff:7f00:1]:{port}"),
        format!("2130706433:{port}"),
        format!("0x7f000001:{port}"),
        format!("127.1:{port}"),
        format!("localhost:{port}"),
        format!("[::]:{port}"),
        "[::ffff:169.254.169.254]:80".to_string(),
    ] {
        let status = status_of(proxy, target.clone()).await;
        assert!(status.starts_with("HTTP/1.1 403"), "{target}: {status}");
    }
    // Absolute form too.
    let c = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
        .build()
        .unwrap();
    for url in [
        format!("http://0.0.0.0:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ] {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 403, "{url}");
    }
    // The loopback service never heard of any of it.
    let stats = json_at(&client(), &format!("http://{}/__stats", up.addr)).await;
    assert_eq!(stats["requests"], 0, "{stats}");
    // And nothing was counted for a refused destination.
    let hosts = json_at(&client(), &gw.admin_url("/api/v1/hosts")).await;
    let forward: Vec<_> = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["proxy"] == "forward")
        .collect();
    assert!(forward.is_empty(), "{hosts}");
}

#[tokio::test]
async fn the_gateway_itself_is_never_a_destination() {
    let up = Upstream::start("a");
    let rest = one_route(&up);
    // No destination policy at all (a loopback forward proxy may be open).
    let (gw, proxy) = forward_gateway("", &rest);
    for target in [
        gw.admin.to_string(),
        format!("localhost:{}", gw.admin.port()),
        format!("0.0.0.0:{}", gw.admin.port()),
        gw.addr.to_string(),
        proxy.to_string(),
    ] {
        let status = status_of(proxy, target.clone()).await;
        assert!(status.starts_with("HTTP/1.1 403"), "{target}: {status}");
    }
    // Through a tunnel, no one reaches the admin API to raise a limit.
    let r = client()
        .get(gw.admin_url("/api/v1/clients"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A real destination still works.
    let status = status_of(proxy, up.addr.to_string()).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

/// Tunnels to a reverse-proxy backend count in the forward proxy's own
/// namespace (its default cap), not against the backend's cap; and every
/// alias of an address shares the address's count.
#[tokio::test]
async fn forward_counters_are_their_own_and_aliases_share_them() {
    let backend = Upstream::start("backend");
    let rest = upstream_toml("api", &[backend.addr], "max_connections = 2")
        + &route_toml("main", "/", "api");
    let (gw, proxy) = forward_gateway("default_max_connections = 3", &rest);
    let port = backend.addr.port();
    let mut open = Vec::new();
    for _ in 0..3 {
        let t = backend.addr.to_string();
        let (s, status) = tokio::task::spawn_blocking(move || connect(proxy, &t))
            .await
            .unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        open.push(s);
    }
    // The reverse proxy still has both its slots to the same backend.
    let results = burst(&gw.url("/x?delay_ms=300"), 2).await;
    assert!(results.iter().all(|r| r.0 == 200), "{results:?}");
    // Every alias of 127.0.0.1 is at the same cap of 3.
    for alias in [
        format!("localhost:{port}"),
        format!("127.1:{port}"),
        format!("2130706433:{port}"),
        format!("0x7f000001:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
    ] {
        let status = status_of(proxy, alias.clone()).await;
        assert!(status.starts_with("HTTP/1.1 503"), "{alias}: {status}");
    }
    let hosts = json_at(&client(), &gw.admin_url("/api/v1/hosts")).await;
    let find = |proxy: &str| {
        hosts["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["proxy"] == proxy && h["host"] == backend.addr.to_string())
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(find("forward")["active"], 3, "{hosts}");
    assert_eq!(find("reverse")["max_connections"], 2, "{hosts}");
    drop(open);
}

/// Thousands of refused destinations leave no counter, no metric label and
/// no growth behind; allowed but unreachable ones are summed as `other`.
#[tokio::test]
async fn refused_destinations_leave_nothing_behind() {
    let (gw, proxy) = forward_gateway(
        "allow_hosts = [\"127.0.0.0/8\"]\ndeny_hosts = [\"*.blocked.test\"]",
        &unused_route(),
    );
    let targets: Vec<String> = (0..2000)
        .map(|i| format!("h{i}.blocked.test:443"))
        .chain((0..200).map(|i| format!("10.{}.{}.1:443", i / 250, i % 250)))
        .collect();
    tokio::task::spawn_blocking(move || {
        for t in targets {
            let (_, status) = connect(proxy, &t);
            assert!(status.starts_with("HTTP/1.1 403"), "{t}: {status}");
        }
    })
    .await
    .unwrap();
    // Allowed destinations with nothing listening: counted, then forgotten.
    for _ in 0..20 {
        let t = format!("127.0.0.1:{}", free_port());
        let status = status_of(proxy, t).await;
        assert!(status.starts_with("HTTP/1.1 502"), "{status}");
    }
    // The last tunnel's place is given back after its 502 is written:
    // wait for it rather than race it (a CI run read 1).
    let want = "floodgate_upstream_connections{host=\"other\",proxy=\"forward\"} 0";
    let mut m = gw.metrics().await;
    for _ in 0..50 {
        if m.contains(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = gw.metrics().await;
    }
    assert!(!m.contains("blocked.test"), "refused names in metrics");
    assert!(m.len() < 64 * 1024, "metrics grew to {} bytes", m.len());
    assert!(m.contains(want), "{m}");
    let hosts = json_at(&client(), &gw.admin_url("/api/v1/hosts")).await;
    assert!(!hosts.to_string().contains("blocked"), "{hosts}");
}

/// Found by a hostile-client run: an absolute-form target with an empty
/// path and a query (`http://host:port?q`) was refused 502; it goes
/// upstream as `/?q` (RFC 9112 §3.2.1), its query kept.
#[tokio::test]
async fn an_empty_path_with_a_query_goes_upstream_as_slash() {
    let up = Upstream::start("a");
    let (_gw, proxy) = forward_gateway("", &unused_route());
    let addr = up.addr;
    let raw = format!(
        "GET http://{addr}?status=201 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let text = tokio::task::spawn_blocking(move || exchange(proxy, raw.as_bytes()))
        .await
        .unwrap();
    // The demo upstream answers `status` from the query: it came through.
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    assert!(text.contains("\"path\":\"/\""), "{text}");
}
