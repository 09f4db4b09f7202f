//! Connection caps per host, in the reverse and the forward proxy, against a
//! slow real upstream: exact admission at the cap, slots that come back,
//! CONNECT tunnels counted for their lifetime, absolute-form requests, the
//! destination policy, and caps changed at runtime through the admin API.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

async fn hosts(gw: &Gateway) -> serde_json::Value {
    reqwest::get(gw.admin_url("/api/v1/hosts"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn active(gw: &Gateway, host: &str) -> u64 {
    hosts(gw).await["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .map_or(0, |h| h["active"].as_u64().unwrap())
}

async fn wait_idle(gw: &Gateway, host: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while active(gw, host).await != 0 {
        assert!(
            Instant::now() < deadline,
            "{host} never went idle: {}",
            hosts(gw).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn upstream_stats(up: &Upstream) -> serde_json::Value {
    reqwest::get(format!("http://{}/__stats", up.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn reverse_proxy_cap_admits_exactly_the_cap() {
    let up = Upstream::start("slow");
    let rest =
        upstream_toml("api", &[up.addr], "max_connections = 3") + &route_toml("main", "/", "api");
    let gw = Gateway::start("", &rest);
    let results = burst(&gw.url("/x?delay_ms=1000"), 8).await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(ok, 3, "{results:?}");
    assert_eq!(refused.len(), 5, "{results:?}");
    for r in refused {
        assert_eq!(r.1, "connection_limit");
        assert_eq!(r.2.as_deref(), Some("1"));
    }
    // The upstream never saw more than the cap at once.
    let s = upstream_stats(&up).await;
    assert!(s["max_in_flight"].as_u64().unwrap() <= 3, "{s}");
    assert_eq!(s["requests"], 3);
    wait_idle(&gw, &up.addr.to_string()).await;
    let m = gw.metrics().await;
    assert!(
        m.contains(&format!(
            "floodgate_upstream_connection_limit{{host=\"{}\",proxy=\"reverse\"}} 3",
            up.addr
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "floodgate_upstream_connections{{host=\"{}\",proxy=\"reverse\"}} 0",
            up.addr
        )),
        "{m}"
    );
}

#[tokio::test]
async fn a_full_backend_sends_traffic_to_another() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let rest = upstream_toml("api", &[a.addr, b.addr], "max_connections = 1")
        + &route_toml("main", "/", "api");
    let gw = Gateway::start("", &rest);
    let results = burst(&gw.url("/x?delay_ms=800"), 2).await;
    assert!(results.iter().all(|r| r.0 == 200), "{results:?}");
    let results = burst(&gw.url("/x?delay_ms=800"), 3).await;
    assert_eq!(
        results.iter().filter(|r| r.0 == 200).count(),
        2,
        "{results:?}"
    );
}

#[tokio::test]
async fn aborted_clients_leave_no_slot_behind() {
    let up = Upstream::start("slow");
    let rest =
        upstream_toml("api", &[up.addr], "max_connections = 2") + &route_toml("main", "/", "api");
    let gw = Gateway::start("", &rest);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (c, url) = (impatient.clone(), gw.url("/x?delay_ms=3000"));
        tasks.push(tokio::spawn(async move {
            c.get(url).send().await.map(|r| r.status())
        }));
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    wait_idle(&gw, &up.addr.to_string()).await;
    // The whole cap is usable again.
    let results = burst(&gw.url("/x?delay_ms=300"), 2).await;
    assert!(results.iter().all(|r| r.0 == 200), "{results:?}");
}

#[tokio::test]
async fn caps_change_at_runtime_through_the_admin_api() {
    let up = Upstream::start("slow");
    let rest =
        upstream_toml("api", &[up.addr], "max_connections = 3") + &route_toml("main", "/", "api");
    let gw = Gateway::start("", &rest);
    let c = client();
    let host = up.addr.to_string();
    let r = c
        .put(gw.admin_url(&format!("/api/v1/hosts/{host}")))
        .body(r#"{"max_connections": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["max_connections"], 1);
    assert_eq!(v["source"], "api");
    let results = burst(&gw.url("/x?delay_ms=600"), 3).await;
    assert_eq!(
        results.iter().filter(|r| r.0 == 200).count(),
        1,
        "{results:?}"
    );

    // Bad input: 400 with a message, nothing changed.
    let r = c
        .put(gw.admin_url(&format!("/api/v1/hosts/{host}")))
        .body(r#"{"max_connections": -1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "bad_request");

    let r = c
        .delete(gw.admin_url(&format!("/api/v1/hosts/{host}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["max_connections"].as_u64(), v["source"].as_str()),
        (Some(3), Some("file"))
    );
    wait_idle(&gw, &host).await;
    let results = burst(&gw.url("/x?delay_ms=600"), 3).await;
    assert_eq!(
        results.iter().filter(|r| r.0 == 200).count(),
        3,
        "{results:?}"
    );
}

fn forward_gateway(fp: &str) -> (Gateway, SocketAddr) {
    let port = free_port();
    let dummy = ([127, 0, 0, 1], free_port()).into();
    let rest = upstream_toml("unused", &[dummy], "")
        + &route_toml("main", "/", "unused")
        + &format!("[forward_proxy]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n{fp}\n");
    let mut gw = Gateway::start("", &rest);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_port(addr, &mut gw.proc, "forward proxy");
    (gw, addr)
}

/// Opens a CONNECT tunnel; returns the socket and the proxy's status line.
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
    let status = text.lines().next().unwrap_or("").to_string();
    (s, status)
}

/// Sends a plain HTTP request through an open tunnel; returns the body.
fn get_through(s: &mut TcpStream, path: &str) -> String {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test]
async fn connect_tunnels_hold_their_slot_for_their_lifetime() {
    let up = Upstream::start("origin");
    let target = up.addr.to_string();
    let (gw, proxy) = forward_gateway(&format!(
        "default_max_connections = 5\nhost_limits = {{ \"{target}\" = 2 }}"
    ));
    let t = target.clone();
    let (mut t1, s1) = tokio::task::spawn_blocking(move || connect(proxy, &t))
        .await
        .unwrap();
    assert!(s1.starts_with("HTTP/1.1 200"), "{s1}");
    let t = target.clone();
    let (t2, s2) = tokio::task::spawn_blocking(move || connect(proxy, &t))
        .await
        .unwrap();
    assert!(s2.starts_with("HTTP/1.1 200"), "{s2}");
    assert_eq!(active(&gw, &target).await, 2);
    // A third tunnel is refused at once.
    let t = target.clone();
    let (mut t3, s3) = tokio::task::spawn_blocking(move || connect(proxy, &t))
        .await
        .unwrap();
    assert!(s3.starts_with("HTTP/1.1 503"), "{s3}");
    let mut rest = String::new();
    let _ = t3.read_to_string(&mut rest);
    assert!(rest.contains("connection_limit"), "{rest}");
    // The tunnel carries bytes both ways.
    let body = tokio::task::spawn_blocking(move || {
        let b = get_through(&mut t1, "/through-the-tunnel");
        drop(t1);
        b
    })
    .await
    .unwrap();
    assert!(body.contains("\"path\":\"/through-the-tunnel\""), "{body}");
    // Closing a tunnel frees its slot.
    let deadline = Instant::now() + Duration::from_secs(5);
    while active(&gw, &target).await != 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = target.clone();
    let (_t4, s4) = tokio::task::spawn_blocking(move || connect(proxy, &t))
        .await
        .unwrap();
    assert!(s4.starts_with("HTTP/1.1 200"), "{s4}");
    drop(t2);
}

#[tokio::test]
async fn absolute_form_requests_are_proxied_under_the_cap() {
    let up = Upstream::start("origin");
    let target = up.addr.to_string();
    let (gw, proxy) = forward_gateway(&format!("host_limits = {{ \"{target}\" = 2 }}"));
    let c = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = c
        .get(format!("http://{target}/abs?x=1"))
        .header("proxy-authorization", "Basic c2VjcmV0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The client gets the id the destination was sent (found by a
    // hostile-client run: the forward proxy returned none).
    let id = r
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/abs");
    assert_eq!(
        id.map(|i| serde_json::json!([i])),
        Some(v["headers"]["x-request-id"].clone()),
        "{v}"
    );
    assert_eq!(v["headers"]["host"], serde_json::json!([target.clone()]));
    assert!(v["headers"].get("proxy-authorization").is_none(), "{v}");

    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (c, url) = (c.clone(), format!("http://{target}/slow?delay_ms=800"));
        tasks.push(tokio::spawn(async move {
            let r = c.get(url).send().await.unwrap();
            let s = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            (s, v["error"].as_str().unwrap_or("").to_string())
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(
        results.iter().filter(|r| r.0 == 200).count(),
        2,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .filter(|r| r.0 == 503)
            .all(|r| r.1 == "connection_limit"),
        "{results:?}"
    );
    wait_idle(&gw, &target).await;
    let m = gw.metrics().await;
    assert!(m.contains("route=\"forward_proxy\""), "{m}");
}

#[tokio::test]
async fn destination_policy_refusals() {
    let up = Upstream::start("origin");
    let other = Upstream::start("other");
    let (_gw, proxy) = forward_gateway(&format!(
        "allow_hosts = [\"127.0.0.0/8\"]\ndeny_hosts = [\"blocked.test\"]\ndeny_ports = [{}]",
        other.addr.port()
    ));
    let t = other.addr.to_string();
    let (mut s, status) = tokio::task::spawn_blocking(move || connect(proxy, &t))
        .await
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    assert!(rest.contains("destination_denied"), "{rest}");
    let (_, status) = tokio::task::spawn_blocking(move || connect(proxy, "blocked.test:443"))
        .await
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    // A name outside the allowed networks: refused once resolved.
    let (_, status) = tokio::task::spawn_blocking(move || connect(proxy, "192.0.2.1:443"))
        .await
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let t = up.addr.to_string();
    let (_, status) = tokio::task::spawn_blocking(move || connect(proxy, &t))
        .await
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    // Absolute form gets the same policy, as JSON.
    let c = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
        .build()
        .unwrap();
    let r = c
        .get(format!("http://{}/x", other.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "destination_denied");
}

#[test]
fn open_forward_proxy_on_a_public_address_is_refused() {
    let out = run_on_config(
        "--check",
        "[[upstreams]]\nname = \"a\"\nbackends = [\"127.0.0.1:1\"]\n[[routes]]\nupstream = \"a\"\n[forward_proxy]\nenabled = true\nlisten = \"0.0.0.0:3128\"\n",
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("forward_proxy.listen (line 8): a forward proxy on a non-loopback address needs an explicit destination policy"), "{text}");
}
