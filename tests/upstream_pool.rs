//! The gateway's pool of idle upstream connections, seen from a real
//! upstream of raw bytes: a connection is reused while it is idle, closed
//! at the upstream's `idle_timeout` (or before the `Keep-Alive: timeout`
//! its upstream announced), and let go as soon as its upstream
//! closes it, without costing a request; a request that meets pooled
//! connections its upstream is closing is retried on a new one.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // tests may block: they are not the gateway

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// What the upstream saw of one connection.
#[derive(Clone, Debug, Default)]
struct Seen {
    requests: usize,
    /// When it answered last.
    answered: Option<Instant>,
    /// When the gateway's end closed (a read of 0 bytes).
    closed: Option<Instant>,
    /// A request it closed on, unanswered (see [`Control::stale_below`]).
    dropped: usize,
    /// The length of each request body it read whole.
    bodies: Vec<usize>,
}

/// What a test changes in the upstream while it runs.
#[derive(Default)]
struct Control {
    /// Milliseconds to wait before each answer.
    delay_ms: AtomicU64,
    /// The connections accepted before this many are reset when their
    /// next request's header arrives, unanswered: as an upstream whose
    /// keep-alive timeout ran out just as a request came.
    stale_below: AtomicUsize,
    /// Seconds each answer says the upstream keeps the connection idle
    /// (`Keep-Alive: timeout=N`; 0: no such field).
    announce_s: AtomicU64,
}

/// An upstream on a loopback port answering each request `200` with a
/// small body, keeping the connection; with `close_after`, it closes its
/// side of a connection that long after an answer (the gateway's end then
/// closes too, and the upstream notes when).
fn upstream(close_after: Option<Duration>) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>, Arc<Control>) {
    // (The gateway's health checks connect too, and send nothing: the
    // tests read the connections that carried a request, [`carried`].)
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let all = seen.clone();
    let control = Arc::new(Control::default());
    let ctl = control.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let seen = all.clone();
            let ctl = ctl.clone();
            let i = {
                let mut s = seen.lock().unwrap();
                s.push(Seen::default());
                s.len() - 1
            };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    let timeout = close_after.unwrap_or(Duration::from_secs(30));
                    conn.set_read_timeout(Some(timeout)).unwrap();
                    let answered = seen.lock().unwrap()[i].requests > 0;
                    match conn.read(&mut buf) {
                        Ok(0) => {
                            seen.lock().unwrap()[i].closed = Some(Instant::now());
                            return;
                        }
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                        Err(e)
                            if close_after.is_some()
                                && answered
                                && matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) =>
                        {
                            // Quiet for `close_after` after an answer: close
                            // its side, and note when the gateway closes its.
                            conn.shutdown(Shutdown::Write).unwrap();
                            conn.set_read_timeout(Some(Duration::from_secs(10)))
                                .unwrap();
                            if let Ok(0) = conn.read(&mut buf) {
                                seen.lock().unwrap()[i].closed = Some(Instant::now());
                            }
                            return;
                        }
                        Err(_) => return,
                    }
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        if i < ctl.stale_below.load(Ordering::SeqCst) {
                            seen.lock().unwrap()[i].dropped += 1;
                            // Reset, unanswered, as soon as the header has
                            // come (a body may still be on its way).
                            socket2::SockRef::from(&conn)
                                .set_linger(Some(Duration::ZERO))
                                .unwrap();
                            return;
                        }
                        // A body of `Content-Length` bytes, read whole.
                        let length = content_length(&head[..end]);
                        if head.len() < end + 4 + length {
                            break; // the rest of the body is still to come
                        }
                        head.drain(..end + 4 + length);
                        if length > 0 {
                            seen.lock().unwrap()[i].bodies.push(length);
                        }
                        let delay = ctl.delay_ms.load(Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(delay));
                        // Counted before the answer goes, so that a test
                        // reading the counts after its answer sees it.
                        {
                            let mut s = seen.lock().unwrap();
                            s[i].requests += 1;
                            s[i].answered = Some(Instant::now());
                        }
                        let announce = match ctl.announce_s.load(Ordering::SeqCst) {
                            0 => String::new(),
                            n => format!("Keep-Alive: timeout={n}\r\n"),
                        };
                        conn.write_all(
                            format!("HTTP/1.1 200 OK\r\n{announce}Content-Length: 2\r\n\r\nok")
                                .as_bytes(),
                        )
                        .unwrap();
                    }
                }
            });
        }
    });
    (addr, seen, control)
}

/// A request header's `Content-Length`, 0 when it has none.
fn content_length(header: &[u8]) -> usize {
    String::from_utf8_lossy(header)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The connections that carried a request.
fn carried(seen: &Mutex<Vec<Seen>>) -> Vec<Seen> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| s.requests > 0)
        .cloned()
        .collect()
}

fn gateway(addr: SocketAddr, upstream_extra: &str) -> Gateway {
    Gateway::start(
        "",
        &(upstream_toml("api", &[addr], upstream_extra) + &route_toml("main", "/", "api")),
    )
}

async fn get_ok(gw: &Gateway) {
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
}

async fn until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Once the gateway has closed every connection that carried a request:
/// those connections, and how long the first stayed idle after its last
/// answer before the gateway closed it.
async fn closed_idle(seen: &Mutex<Vec<Seen>>) -> (Vec<Seen>, Duration) {
    until(
        "the gateway closes its idle connection",
        Duration::from_secs(5),
        || carried(seen).iter().all(|s| s.closed.is_some()),
    )
    .await;
    let s = carried(seen);
    let idle = s[0].closed.unwrap() - s[0].answered.unwrap();
    (s, idle)
}

/// Requests one after another go over one upstream connection, which the
/// gateway closes once it has been idle for the upstream's `idle_timeout`.
#[tokio::test]
async fn an_idle_upstream_connection_is_reused_then_closed_at_its_idle_timeout() {
    let (addr, seen, _) = upstream(None);
    let gw = gateway(addr, "idle_timeout = \"1s\"");
    for _ in 0..3 {
        get_ok(&gw).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (s, idle) = closed_idle(&seen).await;
    assert_eq!(s.len(), 1, "one upstream connection for all three: {s:?}");
    assert_eq!(s[0].requests, 3);
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(2500),
        "closed {idle:?} after its last answer, for an idle_timeout of 1s"
    );
}

/// An upstream that says how long it keeps an idle connection
/// (`Keep-Alive: timeout=1`; Node.js says 5): the gateway lets the
/// connection go before then, half a second after the answer, not at its
/// own `idle_timeout` (60 s), so no request goes out on a connection the
/// upstream is closing; the next request opens a new one.
#[tokio::test]
async fn a_connection_is_let_go_before_the_upstream_s_announced_keep_alive_timeout() {
    let (addr, seen, control) = upstream(None);
    control.announce_s.store(1, Ordering::SeqCst);
    let gw = gateway(addr, "");
    get_ok(&gw).await;
    let (_, idle) = closed_idle(&seen).await;
    assert!(
        idle >= Duration::from_millis(400) && idle < Duration::from_millis(1000),
        "closed {idle:?} after its answer, for an announced timeout of 1s"
    );
    get_ok(&gw).await;
    let s = carried(&seen);
    assert_eq!(
        s.len(),
        2,
        "the next request opened a new connection: {s:?}"
    );
}

/// An upstream that closes a connection while it is idle in the pool: the
/// gateway closes its end at once (it does not hold it until a request
/// finds it), and the next request goes over a new connection and passes.
#[tokio::test]
async fn an_upstream_closing_an_idle_connection_is_let_go_at_once_and_costs_no_request() {
    let (addr, seen, _) = upstream(Some(Duration::from_millis(200)));
    let gw = gateway(addr, "");
    for n in 1..=3 {
        get_ok(&gw).await;
        until(
            "the upstream closes the connection",
            Duration::from_secs(5),
            || carried(&seen).iter().filter(|s| s.closed.is_some()).count() == n,
        )
        .await;
    }
    let s = carried(&seen);
    assert_eq!(s.len(), 3, "a new connection after each close: {s:?}");
    for c in &s {
        assert_eq!(c.requests, 1);
        // 200 ms of quiet, then the upstream's close, then the gateway's.
        let after = c.closed.unwrap() - c.answered.unwrap();
        assert!(
            after < Duration::from_millis(200 + 500),
            "the gateway closed its end {after:?} after the answer: {s:?}"
        );
    }
}

/// An upstream that closes its idle connections as requests arrive on them
/// (its keep-alive timeout ran out just then: the race every keep-alive
/// pool meets, and which no check while idle can see). A GET that meets
/// one is retried, on a new connection, not on another pooled one as old:
/// with three stale connections pooled, a retry that took the pool's next
/// one would meet a second closing connection and answer 502.
#[tokio::test]
async fn a_request_meeting_stale_pooled_connections_is_retried_on_a_new_one() {
    let (addr, seen, ctl) = upstream(None);
    let gw = gateway(addr, "");
    // Three requests at once, each answered after 300 ms: three upstream
    // connections, pooled after.
    ctl.delay_ms.store(300, Ordering::SeqCst);
    tokio::join!(get_ok(&gw), get_ok(&gw), get_ok(&gw));
    ctl.delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(carried(&seen).len(), 3, "{:?}", carried(&seen));
    // Every connection so far now closes on its next request.
    let before = seen.lock().unwrap().len();
    ctl.stale_below.store(before, Ordering::SeqCst);
    get_ok(&gw).await;
    let all = seen.lock().unwrap().clone();
    let dropped: usize = all.iter().map(|s| s.dropped).sum();
    assert_eq!(
        dropped, 1,
        "one stale connection met, then a new one: {all:?}"
    );
    let answered_new: usize = all[before..].iter().map(|s| s.requests).sum();
    assert_eq!(answered_new, 1, "answered over a new connection: {all:?}");
    // The next request reuses that new connection (the pool gives the
    // connection released last), and meets no stale one.
    get_ok(&gw).await;
    let all = seen.lock().unwrap().clone();
    assert_eq!(all.iter().map(|s| s.dropped).sum::<usize>(), 1, "{all:?}");
    let answered_new: usize = all[before..].iter().map(|s| s.requests).sum();
    assert_eq!(answered_new, 2, "{all:?}");
    assert_eq!(
        all[before..].iter().filter(|s| s.requests > 0).count(),
        1,
        "both over one new connection: {all:?}"
    );
}

/// A request with a body that meets a pooled connection its upstream
/// resets as the request arrives: the gateway's write of the body can fail
/// before its read of the answer does, and that write error, not the
/// failed read, decided whether to retry (it never retries: 1 to 19% of
/// such requests ended in a 502 in a hostile run). Now the request is
/// retried as any that failed before its answer on a reused connection,
/// over a new connection that receives the whole body. (Which error comes
/// first is a race; here the reset comes before the body is written, and
/// without the fix about nine in ten of the 60 requests got a 502.)
#[tokio::test]
async fn a_request_whose_body_meets_a_reset_pooled_connection_is_retried() {
    let (addr, seen, ctl) = upstream(None);
    let gw = gateway(addr, "");
    let body = vec![b'x'; 10_000];
    let mut statuses = Vec::new();
    for _ in 0..60 {
        ctl.stale_below.store(0, Ordering::SeqCst);
        get_ok(&gw).await; // a connection, pooled after
        ctl.stale_below
            .store(seen.lock().unwrap().len(), Ordering::SeqCst);
        let r = client()
            .put(gw.url("/x"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    let all = seen.lock().unwrap().clone();
    let refused = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(refused, 0, "{statuses:?}");
    let dropped: usize = all.iter().map(|s| s.dropped).sum();
    assert_eq!(dropped, 60, "each PUT met one reset connection first");
    let bodies: Vec<usize> = all.iter().flat_map(|s| s.bodies.clone()).collect();
    assert_eq!(bodies, vec![10_000; 60], "each body arrived whole, once");
}
