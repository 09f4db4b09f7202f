//! The HTTP/1 guard's reading, framing and chunk scanning, on crafted
//! bytes and streams.

use super::target::tests::strings_over;
use super::*;
use tokio::io::AsyncWriteExt;

const LIMITS: Limits = Limits {
    max_header_size: 256,
    header_timeout: Duration::from_millis(200),
    idle: Duration::from_millis(200),
    buffer_size: 64,
    body_idle: Duration::from_millis(150),
    body_total: Duration::from_millis(600),
};

fn head(s: &str) -> Result<Head, Refusal> {
    inspect(s.as_bytes(), s.len())
}

fn refused(s: &str) -> String {
    head(s).expect_err(s).message
}

/// A server that is not stopping (its sender leaked: never dropped).
fn running() -> ShutdownWatch {
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(tx);
    rx
}

async fn stream_of(data: &[u8]) -> tokio::io::DuplexStream {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    client.write_all(data).await.unwrap();
    // Kept open (a closed write side would end reads early) by leaking.
    std::mem::forget(client);
    server
}

#[test]
fn finds_the_blank_line() {
    assert_eq!(
        head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", 0),
        Some(27)
    );
    assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
    assert_eq!(head_end(b"\r\nGET / HTTP/1.1\r\n\r\n", 0), Some(20));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
}

#[test]
fn framing() {
    let h = head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap();
    assert_eq!(h.framing, Framing::Length(5));
    let h = head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
        .unwrap();
    assert_eq!(h.framing, Framing::Length(5));
    assert!(
        head("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            .unwrap()
            .upgrade
    );
    head("GET http://a:8/x HTTP/1.1\r\nHost: a:8\r\n\r\n").unwrap();
    let h = head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked,\r\n\r\n").unwrap();
    assert_eq!(h.framing, Framing::Chunked);
    let h = head("GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(h.framing, Framing::None);
    assert!(
        head("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n")
            .unwrap()
            .connect
    );
}

#[test]
fn ambiguous_requests_are_refused() {
    let cases = [
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "disagree",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "not a number",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "not a number",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n",
            "ambiguous",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n",
            "ambiguous",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "end in chunked",
        ),
        (
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.0",
        ),
        ("GET / HTTP/1.1\r\n\r\n", "exactly one Host"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "exactly one Host",
        ),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "malformed Host"),
        ("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", "malformed Host"),
        // Found by a hostile-client run: a port that is not digits.
        ("GET / HTTP/1.1\r\nHost: a:-1\r\n\r\n", "malformed Host"),
        ("GET / HTTP/1.1\r\nHost: a:80a\r\n\r\n", "malformed Host"),
        ("GET / HTTP/1.1\r\nHost: [::1]:8x\r\n\r\n", "malformed Host"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",
            "folding",
        ),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", "control"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n",
            "header name",
        ),
        ("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", "colon"),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", "HTTP/1.0 and HTTP/1.1"),
        ("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", "request line"),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            "not a number",
        ),
        (
            "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
            "at most one Host",
        ),
        ("GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n", "differs"),
        ("GET http://u@a/ HTTP/1.1\r\nHost: u@a\r\n\r\n", "Host"),
        (
            "CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 3\r\n\r\n",
            "no body",
        ),
    ];
    for (req, expected) in cases {
        let msg = refused(req);
        assert!(msg.contains(expected), "{req:?}: {msg}");
    }
    // Host forms that are fine.
    head("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").unwrap();
    head("GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n").unwrap();
    head("GET / HTTP/1.1\r\nHost: a_b:80\r\n\r\n").unwrap();
    head("GET / HTTP/1.1\r\nHost:\r\n\r\n").unwrap();
    let many = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        "X: 1\r\n".repeat(MAX_HEADERS)
    );
    let r = head(&many).unwrap_err();
    assert_eq!(r.reason, RejectReason::HeadersTooLarge);
}

#[test]
fn chunk_scan_finds_the_end_in_any_split() {
    let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    let end = body.len() - 4;
    for split in 0..body.len() {
        let mut scan = ChunkScan::default();
        let first = scan.advance(&body[..split]).unwrap();
        let got = match first {
            Some(n) => n,
            None => scan.advance(&body[split..]).unwrap().unwrap(),
        };
        assert_eq!(got, end, "split at {split}");
    }
    // Lines end in CRLF (a bare LF is where two parsers could disagree).
    for bad in [
        &b"x\r\n"[..],
        b"5\r\nhelloXX",
        b"fffffffffffffffff\r\n",
        b"2\nxx",
        b"2;x\nxx",
        b"1\r\nx\n0\r\n\r\n",
        b"0\r\n\n",
    ] {
        assert!(ChunkScan::default().advance(bad).is_err(), "{bad:?}");
    }
    assert_eq!(ChunkScan::default().advance(b"0\r\n\r\n").unwrap(), Some(5));
}

#[tokio::test]
async fn small_body_read_and_pipelined_request_kept() {
    let data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut s = stream_of(data).await;
    match read_request(&mut s, BytesMut::new(), LIMITS, true, &running()).await {
        Read::Request {
            buf,
            head,
            end,
            rest,
        } => {
            assert_eq!(head.framing, Framing::Length(3));
            assert!(matches!(rest, Rest::Done));
            assert!(buf[..end].ends_with(b"abc"));
            assert!(buf[end..].starts_with(b"GET /"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn expect_continue_answered_and_removed() {
    let (mut client, mut server) = tokio::io::duplex(4096);
    client
        .write_all(
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        read_request(&mut server, BytesMut::new(), LIMITS, true, &running()).await
    });
    let mut got = [0u8; 25];
    tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
        .await
        .unwrap();
    assert_eq!(&got, b"HTTP/1.1 100 Continue\r\n\r\n");
    client.write_all(b"ok").await.unwrap();
    match reader.await.unwrap() {
        Read::Request { buf, head, end, .. } => {
            let text = String::from_utf8_lossy(&buf[..end]).to_string();
            assert!(!text.to_ascii_lowercase().contains("expect"), "{text}");
            assert!(text.ends_with("\r\n\r\nok"), "{text}");
            assert_eq!(head.len, text.len() - 2);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn too_large_closed_and_malformed() {
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300));
    let mut s = stream_of(big.as_bytes()).await;
    assert!(matches!(
        read_request(&mut s, BytesMut::new(), LIMITS, true, &running()).await,
        Read::Refused(r, None) if r.reason == RejectReason::HeadersTooLarge
    ));
    let (mut c, mut s) = tokio::io::duplex(64);
    c.write_all(b"GET / HT").await.unwrap();
    drop(c);
    assert!(matches!(
        read_request(&mut s, BytesMut::new(), LIMITS, true, &running()).await,
        Read::Closed
    ));
    // A refusal carries the client's request id.
    let mut s = stream_of(b"GET / HTTP/1.1\r\nX-Request-Id: abc-1\r\n\r\n").await;
    match read_request(&mut s, BytesMut::new(), LIMITS, true, &running()).await {
        Read::Refused(r, id) => {
            assert_eq!(r.reason, RejectReason::BadRequest);
            assert_eq!(id.as_deref(), Some("abc-1"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn slow_header_times_out_as_a_whole() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        // One byte every 50 ms: each read is quick, the header never ends.
        for _ in 0..100 {
            if client.write_all(b"G").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let started = std::time::Instant::now();
    let r = read_request(&mut server, BytesMut::new(), LIMITS, true, &running()).await;
    assert!(matches!(r, Read::Refused(ref r, _) if r.reason == RejectReason::RequestTimeout));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn slow_body_times_out_as_a_whole() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        let _ = client
            .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 60\r\n\r\n")
            .await;
        // A byte every 100 ms: under the idle limit, over the total.
        for _ in 0..60 {
            if client.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = std::time::Instant::now();
    let r = read_request(&mut server, BytesMut::new(), LIMITS, true, &running()).await;
    assert!(matches!(r, Read::Refused(ref r, _) if r.reason == RejectReason::RequestTimeout));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn large_body_streams() {
    let data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nxx";
    let mut s = stream_of(data).await;
    match read_request(&mut s, BytesMut::new(), LIMITS, true, &running()).await {
        Read::Request {
            end, head, rest, ..
        } => {
            // What came with the header goes first; 998 bytes stream.
            assert_eq!(end, head.len + 2);
            assert!(matches!(rest, Rest::Length(998)), "{rest:?}");
            assert_eq!(head.framing, Framing::Length(1000));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn upgrade_needs_the_connection_option_and_protected_names_stay() {
    // An Upgrade counts with the upgrade option, in HTTP/1.1 only.
    let ok = head("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(ok.is_ok_and(|h| h.upgrade));
    for (req, why) in [
        (
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
            "Upgrade needs",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nUpgrade: h2c\r\n\r\n",
            "Upgrade needs",
        ),
        (
            "GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "Upgrade needs",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Forwarded-Proto\r\n\r\n",
            "may not name x-forwarded-proto",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: a\r\nConnection: HOST\r\n\r\n",
            "may not name host",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: :authority\r\n\r\n",
            "malformed option",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: a,b,c,d,e,f,g,h,i,j\r\n\r\n",
            "more than 9",
        ),
    ] {
        assert!(refused(req).contains(why), "{req:?}: {}", refused(req));
    }
    // Nine options, empty ones not counted, are fine.
    assert!(head("GET / HTTP/1.1\r\nHost: a\r\nConnection: a,,b,c,d,e,f,g,h,i\r\n\r\n").is_ok());
}

/// A header line's name and colon (one scan of the name, no search for
/// the colon) are refused exactly as a search for the first `:` then a
/// check of the name refused them, with the same reasons, on every line of
/// up to 5 characters over an alphabet of token bytes, separators and the
/// colon.
#[test]
fn a_header_name_is_found_as_by_a_search_for_its_colon() {
    let searched = |line: &[u8]| match line.iter().position(|b| *b == b':') {
        None => Some("a header line without a colon"),
        Some(0) => Some("malformed header name"),
        Some(i) if !line[..i].iter().all(|b| super::inspect::tchar(*b)) => {
            Some("malformed header name")
        }
        Some(_) => None,
    };
    for line in strings_over(b"a-:@ \"", 1..=5) {
        // A first space is obsolete folding, refused before the name.
        if line[0] == b' ' {
            continue;
        }
        let text = String::from_utf8(line.clone()).unwrap();
        let req = format!("GET / HTTP/1.1\r\nHost: a\r\n{text}\r\n\r\n");
        let got = head(&req).err().map(|r| r.message);
        match searched(&line) {
            Some(why) => assert_eq!(got.as_deref(), Some(why), "{text:?}"),
            None => assert!(
                got.as_deref()
                    .is_none_or(|m| !m.contains("colon") && !m.contains("header name")),
                "{text:?}: {got:?}"
            ),
        }
    }
}

/// The token table holds exactly RFC 9110's `tchar`: letters, digits and
/// ``!#$%&'*+-.^_`|~``.
#[test]
fn the_token_table_is_rfc_9110_s_tchar() {
    for b in 0..=255u8 {
        let want = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        assert_eq!(super::inspect::tchar(b), want, "{b:#x}");
    }
}

/// The word-at-a-time control check agrees with the byte rule for every
/// byte value at every place of values up to 24 bytes long (so in a full
/// word and in the remainder), beside a tab and obs-text.
#[test]
fn the_control_check_agrees_with_the_byte_rule() {
    let rule = |v: &[u8]| v.iter().any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f);
    for len in 1..=24usize {
        for at in 0..len {
            for b in 0..=255u8 {
                for fill in [b'a', b'\t', 0x80, 0xff, b' '] {
                    let mut v = vec![fill; len];
                    v[at] = b;
                    assert_eq!(super::lines::has_control(&v), rule(&v), "{v:?}");
                }
            }
        }
    }
    assert!(!super::lines::has_control(b""));
    assert!(!super::lines::has_control(b"text/html; charset=utf-8\t(x)"));
    assert!(super::lines::has_control(b"text/html; charset=utf-8\x7f"));
}

#[tokio::test]
async fn an_idle_wait_ends_when_the_server_stops_and_only_then() {
    let idle = Limits {
        idle: Duration::from_secs(30),
        ..LIMITS
    };
    // Not stopping: a request that comes after several checks is read.
    let (mut client, mut server) = tokio::io::duplex(4096);
    let late = tokio::spawn(async move {
        tokio::time::sleep(SHUTDOWN_CHECK * 2 + Duration::from_millis(300)).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        client
    });
    let r = read_request(&mut server, BytesMut::new(), idle, false, &running()).await;
    assert!(matches!(r, Read::Request { .. }), "{r:?}");
    drop(late.await.unwrap());
    // Stopping: the idle connection is let go at the next check, long
    // before its idle time.
    let (tx, rx) = tokio::sync::watch::channel(false);
    let (_client, mut server) = tokio::io::duplex(4096);
    let started = std::time::Instant::now();
    let stop = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(true).unwrap();
        tx
    });
    let r = read_request(&mut server, BytesMut::new(), idle, false, &rx).await;
    assert!(matches!(r, Read::Closed), "{r:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < SHUTDOWN_CHECK * 2,
        "{took:?}"
    );
    drop(stop.await.unwrap());
    // A first request's header is not an idle wait: read under its own
    // deadline whatever `shutdown` says.
    let (tx, rx) = tokio::sync::watch::channel(true);
    let mut s = stream_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let r = read_request(&mut s, BytesMut::new(), idle, true, &rx).await;
    assert!(matches!(r, Read::Request { .. }), "{r:?}");
    drop(tx);
}

/// One timer serves a connection's every wait: each wait's deadline is
/// its own `wait` from when it began to wait, whether the timer's last
/// deadline was later (moved earlier), earlier (moved later: the cheap
/// case, every request of a kept-alive connection) or already passed.
#[tokio::test(start_paused = true)]
async fn one_idle_timer_keeps_every_wait_to_its_own_deadline() {
    use tokio::time::{sleep, Instant};
    let never = std::future::pending::<()>;
    let mut w = IdleWait::default();
    let ms = Duration::from_millis;
    // Done before the deadline.
    assert_eq!(w.within(ms(100), sleep(ms(60))).await, Some(()));
    // Begun before the last deadline, which is moved later.
    let t = Instant::now();
    assert_eq!(w.within(ms(100), never()).await, None);
    assert_eq!(t.elapsed(), ms(100));
    // After the timer fired.
    assert_eq!(w.within(ms(100), sleep(ms(30))).await, Some(()));
    let t = Instant::now();
    assert_eq!(w.within(ms(100), never()).await, None);
    assert_eq!(t.elapsed(), ms(100));
    // A shorter wait after a longer one: its deadline moves earlier.
    assert_eq!(w.within(ms(5000), sleep(ms(10))).await, Some(()));
    let t = Instant::now();
    assert_eq!(w.within(ms(100), never()).await, None);
    assert_eq!(t.elapsed(), ms(100));
    // Many waits in a row, each shorter than the deadline: none expires.
    for _ in 0..20 {
        assert_eq!(w.within(ms(100), sleep(ms(90))).await, Some(()));
    }
    // A future ready at once is not timed.
    assert_eq!(w.within(Duration::ZERO, async { 7 }).await, Some(7));
}

/// A target Pingora's parse refuses gets the guard's refusal, in JSON,
/// through the whole look at a header (found by a hostile-client run:
/// Pingora's plain-text 400).
#[test]
fn a_target_pingora_refuses_is_refused_in_json() {
    assert_eq!(
        refused("GET /a<b> HTTP/1.1\r\nHost: a\r\n\r\n"),
        "malformed request target"
    );
    assert_eq!(
        refused("GET http://a/x<y HTTP/1.1\r\nHost: a\r\n\r\n"),
        "malformed request target"
    );
    assert!(head("GET /a%zz?q=\"x HTTP/1.1\r\nHost: a\r\n\r\n").is_err());
    assert!(head("GET /a\"b{}^|?q=`x` HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
}
