//! A connection's every phase has a deadline, through the real gateway:
//! idle TLS connections (closed after the handshake deadline, capped per
//! address), an HTTP/2 header block that never ends, slow request bodies
//! (which never hold an upstream slot), a client that stops reading its
//! answer, and a drain that load balancers can see. Each test asserts what
//! the attacker gets and that a normal client is served meanwhile.

#![allow(clippy::unwrap_used)]
#![allow(clippy::expect_used)] // a test stops with the reason
#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// `[[server.tls]]` on a free port with a certificate for 127.0.0.1.
fn tls_listener(ca: &TestCa, dir: &Path) -> (String, SocketAddr) {
    let (cert, key) = ca.issue(dir, "gw", &["127.0.0.1", "localhost"]);
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let toml = format!(
        "\n[[server.tls]]\nlisten = \"{addr}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    (toml, addr)
}

fn https_client(ca: &TestCa, from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
        .local_address(std::net::IpAddr::from(from))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// How long until the server closes `s` (reading and discarding).
fn time_to_close(mut s: TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed())
            }
            Err(_) => return None,
        }
    }
}

/// Finding 1: 30 connections that never start their TLS handshake. Over
/// the per-address cap they are closed at once; the rest when the
/// handshake deadline passes. A client from another address, and the
/// admin API, are served meanwhile.
#[tokio::test]
async fn idle_tls_connections_meet_a_deadline_and_a_cap() {
    let up = Upstream::start("a");
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (tls, tls_addr) = tls_listener(&ca, dir.path());
    let mut gw = Gateway::start(
        &format!("tls_handshake_timeout = \"3s\"\nmax_connections_per_ip = 20\n{tls}"),
        &one_route(&up),
    );
    wait_for_port(tls_addr, &mut gw.proc, "tls listener");
    let flood: Vec<TcpStream> = (0..30)
        .map(|_| {
            let s = TcpStream::connect(tls_addr).unwrap();
            // In order: the first 20 are admitted.
            std::thread::sleep(Duration::from_millis(5));
            s
        })
        .collect();
    let started = Instant::now();
    let waits: Vec<_> = flood
        .into_iter()
        .map(|s| std::thread::spawn(move || time_to_close(s, Duration::from_secs(10))))
        .collect();

    // Meanwhile: a client on another address, over TLS, and the admin API.
    let normal = https_client(&ca, [127, 0, 0, 2]);
    let r = normal
        .get(format!("https://127.0.0.1:{}/x", tls_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        client()
            .get(gw.admin_url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served while flooded"
    );

    let closed: Vec<Duration> = waits
        .into_iter()
        .map(|w| w.join().unwrap().expect("every idle connection is closed"))
        .collect();
    let early = closed
        .iter()
        .filter(|d| **d < Duration::from_millis(1500))
        .count();
    assert_eq!(
        early, 10,
        "over the per-address cap: closed at once: {closed:?}"
    );
    assert!(
        closed.iter().all(|d| *d < Duration::from_secs(6)),
        "the rest at the handshake deadline: {closed:?}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "floodgate_connections_refused_total{reason=\"address\"}"
        ),
        10.0
    );
    assert_eq!(
        metric(
            &m,
            "floodgate_connections_refused_total{reason=\"tls_handshake_timeout\"}"
        ),
        20.0
    );
}

/// A TLS client offering `h2`, for raw HTTP/2 frames.
async fn h2_tls(
    ca: &TestCa,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls_pemfile::certs(&mut ca.ca_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    roots.add(der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Finding 1: HTTP/2 HEADERS without END_HEADERS, and no CONTINUATION:
/// the connection is closed at the header deadline. A normal HTTP/2
/// request is served.
#[tokio::test]
async fn an_http2_header_block_must_end_in_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("a");
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (tls, tls_addr) = tls_listener(&ca, dir.path());
    let mut gw = Gateway::start(&format!("header_timeout = \"1s\"\n{tls}"), &one_route(&up));
    wait_for_port(tls_addr, &mut gw.proc, "tls listener");

    let mut s = h2_tls(&ca, tls_addr).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                       // HEADERS, stream 1, END_STREAM but no END_HEADERS: `:method GET`.
    out.extend(frame(0x1, 0x1, 1, &[0x82]));
    s.write_all(&out).await.unwrap();
    s.flush().await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection stays open past the header deadline"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    let normal = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = normal
        .get(format!("https://127.0.0.1:{}/x", tls_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_2)
    );
}

/// Finding 2 (HTTP/2): streams that send their request headers and then
/// nothing of their body — no length declared, so nothing is read ahead —
/// are ended after the body idle time, and the slots they took come back.
#[tokio::test]
async fn stalled_http2_uploads_free_their_slots() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start("a");
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (tls, tls_addr) = tls_listener(&ca, dir.path());
    let mut gw = Gateway::start(
        &format!("body_idle_timeout = \"1s\"\n{tls}"),
        &(upstream_toml("api", &[up.addr], "max_connections = 2")
            + &route_toml("main", "/", "api")),
    );
    wait_for_port(tls_addr, &mut gw.proc, "tls listener");
    let mut s = h2_tls(&ca, tls_addr).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    // POST, https, /, :authority "x"; END_HEADERS, no END_STREAM.
    for stream in [1u32, 3] {
        out.extend(frame(
            0x1,
            0x4,
            stream,
            &[0x83, 0x87, 0x84, 0x41, 0x01, b'x'],
        ));
    }
    s.write_all(&out).await.unwrap();
    s.flush().await.unwrap();
    let c = client();
    // Both slots taken by the stalled uploads.
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream_stats(&up).await["in_flight"] != 2 {
        assert!(
            Instant::now() < deadline,
            "the uploads never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let mut served = None;
    while started.elapsed() < Duration::from_secs(8) {
        if c.get(gw.url("/x")).send().await.unwrap().status() == 200 {
            served = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let served = served.expect("the stalled uploads keep their slots");
    assert!(served < Duration::from_secs(4), "{served:?}");
    drop(s);
}

/// A request whose body arrives one byte every `gap`; returns the status
/// line the gateway answered with.
fn slow_post(addr: SocketAddr, len: usize, gap: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    for _ in 0..len {
        if s.write_all(b"x").is_err() {
            break;
        }
        std::thread::sleep(gap);
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.lines().next().unwrap_or("").to_string()
}

async fn upstream_stats(up: &Upstream) -> serde_json::Value {
    json_at(&client(), &format!("http://{}/__stats", up.addr)).await
}

/// Finding 2: twelve clients trickle their bodies (a byte every 300 ms:
/// under the idle limit, over the total) to a backend capped at 2
/// connections. None of them holds a slot: a normal client is served the
/// whole time, the slow ones get 408, and the upstream never sees them.
#[tokio::test]
async fn slow_bodies_hold_no_upstream_slot() {
    let up = Upstream::start("a");
    let gw = Gateway::start(
        "body_idle_timeout = \"1s\"\nbody_timeout = \"3s\"\nmax_connections_per_ip = 0",
        &(upstream_toml("api", &[up.addr], "max_connections = 2")
            + &route_toml("main", "/", "api")),
    );
    let addr = gw.addr;
    let slow: Vec<_> = (0..12)
        .map(|_| std::thread::spawn(move || slow_post(addr, 40, Duration::from_millis(300))))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = client();
    for _ in 0..10 {
        let r = c.get(gw.url("/x?delay_ms=100")).send().await.unwrap();
        assert_eq!(r.status(), 200, "a normal client is served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in slow {
        let line = t.join().unwrap();
        assert!(line.starts_with("HTTP/1.1 408"), "{line:?}");
    }
    let stats = upstream_stats(&up).await;
    assert_eq!(
        stats["requests"], 10,
        "no slow body reached the upstream: {stats}"
    );
    let m = gw
        .metrics_when(|m| {
            metric(
                m,
                "floodgate_requests_total{outcome=\"request_timeout\",route=\"none\"}",
            ) >= 12.0
        })
        .await;
    assert_eq!(
        metric(
            &m,
            "floodgate_requests_total{outcome=\"request_timeout\",route=\"none\"}"
        ),
        12.0,
        "{m}"
    );
}

/// Finding 2: a body too large to buffer streams upstream; when it stalls
/// past `body_idle_timeout` the connection ends and its slot is free.
#[tokio::test]
async fn a_stalled_streaming_body_frees_its_slot() {
    let up = Upstream::start("a");
    let gw = Gateway::start(
        "body_idle_timeout = \"1s\"\nrequest_buffer_size = \"1KiB\"",
        &(upstream_toml("api", &[up.addr], "max_connections = 1")
            + &route_toml("main", "/", "api")),
    );
    let mut s = TcpStream::connect(gw.addr).unwrap();
    write!(
        s,
        "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[b'x'; 2000]).unwrap();
    // The stalled upload holds the only slot for at most the idle time.
    let closed = tokio::task::spawn_blocking(move || time_to_close(s, Duration::from_secs(10)))
        .await
        .unwrap();
    let closed = closed.expect("the stalled upload is ended");
    assert!(closed < Duration::from_secs(4), "{closed:?}");
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the slot is free again");
    let hosts = json_at(&client(), &gw.admin_url("/api/v1/hosts")).await;
    assert_eq!(hosts["hosts"][0]["active"], 0, "{hosts}");
}

/// Finding 2: a client that asks for a large answer and never reads it is
/// disconnected after `client_write_timeout`, and its slot comes back.
#[tokio::test]
async fn a_client_that_stops_reading_is_let_go() {
    let up = Upstream::start("a");
    let gw = Gateway::start(
        "client_write_timeout = \"1s\"",
        &(upstream_toml("api", &[up.addr], "max_connections = 1")
            + &route_toml("main", "/", "api")),
    );
    let mut s = TcpStream::connect(gw.addr).unwrap();
    write!(s, "GET /x?size=60000000 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let started = Instant::now();
    let c = client();
    let mut served = None;
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if c.get(gw.url("/x")).send().await.unwrap().status() == 200 {
            served = Some(started.elapsed());
            break;
        }
    }
    let served = served.expect("the non-reader keeps the slot");
    assert!(served >= Duration::from_millis(900), "{served:?}");
    drop(s);
}

/// Sends `GET /x` on `s` and reads its whole answer (by its
/// `Content-Length`); returns the answer's head.
fn get_on(s: &mut TcpStream) -> String {
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let text = read_answer(s);
    assert!(
        answer_parts(&text).0.contains("\r\ncontent-length:"),
        "{text}"
    );
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A kept-alive connection is closed `keepalive_timeout` after its last
/// answer, counted afresh for every request: the guard waits for each
/// next request on one timer per connection, its deadline moved later
/// each time. Five requests 600 ms apart keep a connection with a 1 s
/// timeout open for three seconds; once quiet, it is closed about a
/// second after its last answer.
#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_keepalive_timeout_of_quiet() {
    let up = Upstream::start("a");
    let gw = Gateway::start("keepalive_timeout = \"1s\"", &one_route(&up));
    let addr = gw.addr;
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        for _ in 0..5 {
            assert!(get_on(&mut s).starts_with("HTTP/1.1 200"));
            std::thread::sleep(Duration::from_millis(600));
        }
        assert!(get_on(&mut s).starts_with("HTTP/1.1 200"));
        time_to_close(s, Duration::from_secs(5))
    })
    .await
    .unwrap()
    .expect("the quiet connection is closed");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_millis(2500),
        "{closed:?}"
    );
}

/// On SIGTERM a keep-alive connection waiting for its next request is
/// closed at once, as Pingora's own keep-alive loop closes one, not held
/// until the grace period ends; a connection whose request is in flight
/// gets its whole answer, which says `Connection: close`, then is closed.
#[tokio::test]
async fn an_idle_connection_is_closed_when_draining_starts() {
    let up = Upstream::start("a");
    let gw = Gateway::start("grace_period = \"8s\"", &one_route(&up));
    let addr = gw.addr;
    let (idle, busy, fresh) = tokio::task::spawn_blocking(move || {
        let mut idle = TcpStream::connect(addr).unwrap();
        assert!(get_on(&mut idle).starts_with("HTTP/1.1 200"));
        let mut busy = TcpStream::connect(addr).unwrap();
        assert!(get_on(&mut busy).starts_with("HTTP/1.1 200"));
        busy.write_all(b"GET /x?delay_ms=1000 HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        // Found by a hostile-client run: a connection that has sent
        // nothing yet was held until its header timeout (10 s) or the
        // grace period's end.
        let fresh = TcpStream::connect(addr).unwrap();
        (idle, busy, fresh)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.proc.signal("TERM");
    let closed = tokio::task::spawn_blocking(move || time_to_close(idle, Duration::from_secs(6)));
    let fresh = tokio::task::spawn_blocking(move || time_to_close(fresh, Duration::from_secs(6)));
    let answered = tokio::task::spawn_blocking(move || {
        let mut busy = busy;
        busy.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        let mut text = String::new();
        let ended = busy.read_to_string(&mut text).is_ok();
        (text, ended)
    });
    let closed = closed
        .await
        .unwrap()
        .expect("the idle connection is closed");
    assert!(closed < Duration::from_secs(2), "{closed:?}");
    let fresh = fresh
        .await
        .unwrap()
        .expect("the connection that sent nothing is closed");
    assert!(fresh < Duration::from_secs(2), "{fresh:?}");
    let (text, ended) = answered.await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with('}'), "the whole answer: {text}");
    assert!(ended, "and then the connection is closed: {text}");
    // The answer in flight says it is the connection's last.
    let head = answer_parts(&text).0;
    assert!(head.contains("\r\nconnection: close"), "{text}");
}

/// Found by a hostile-client run: a request waiting in an upstream's
/// queue when SIGTERM came was refused (503) with `Connection:
/// keep-alive`, and its connection closed a second later under the next
/// request. The gateway's own answers given while it stops say `close`.
#[tokio::test]
async fn a_refusal_given_while_draining_closes_its_connection() {
    let up = Upstream::start("a");
    let rest = upstream_toml(
        "api",
        &[up.addr],
        "[upstreams.backpressure]\nmin_window = 1\nmax_window = 1\nqueue_timeout = \"1500ms\"\nmax_queue = 5",
    ) + &route_toml("main", "/", "api");
    let gw = Gateway::start("grace_period = \"8s\"", &rest);
    let addr = gw.addr;
    // The window's one place is held; the second request waits for it.
    let (busy, queued) = tokio::task::spawn_blocking(move || {
        let mut busy = TcpStream::connect(addr).unwrap();
        busy.write_all(b"GET /x?delay_ms=4000 HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut queued = TcpStream::connect(addr).unwrap();
        queued
            .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        (busy, queued)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.proc.signal("TERM");
    let text = tokio::task::spawn_blocking(move || {
        let mut queued = queued;
        read_answer(&mut queued)
    })
    .await
    .unwrap();
    let head = answer_parts(&text).0;
    assert!(head.starts_with("http/1.1 503"), "{text}");
    assert!(head.contains("\r\nconnection: close"), "{text}");
    drop(busy);
}

/// Finding 8: on SIGTERM, `/ready` answers 503 (and `/health` 200) while
/// requests in flight finish.
#[tokio::test]
async fn draining_is_visible_on_ready() {
    let up = Upstream::start("a");
    let gw = Gateway::start("grace_period = \"3s\"", &one_route(&up));
    let c = client();
    assert_eq!(
        c.get(gw.admin_url("/ready")).send().await.unwrap().status(),
        200
    );
    let slow = tokio::spawn({
        let url = gw.url("/x?delay_ms=1500");
        async move { client().get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.proc.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c.get(gw.admin_url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["draining"], true, "{v}");
    assert_eq!(
        c.get(gw.admin_url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the request in flight finishes"
    );
}
