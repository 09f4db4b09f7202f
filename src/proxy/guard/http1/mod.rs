//! Reading one HTTP/1 request off a connection before Pingora sees it:
//! its header under a deadline for the whole header and a size cap, a look
//! at its framing, and — when it is small enough — its whole body, under
//! deadlines of its own, so that a slow sender never holds an upstream
//! slot. What the gateway can tell is malformed here is answered in JSON
//! (by the caller) instead of reaching Pingora's plain-text 400.
//!
//! Written by hand: no crate enforces a deadline over a whole header block
//! or a whole body ahead of Pingora's parser. This is not a second parser —
//! it finds where the request ends (the blank line, `Content-Length`, the
//! chunked framing) and refuses what would make that ambiguous; Pingora
//! still parses the request itself.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pingora::prelude::fast_timeout::fast_timeout;
use pingora::prelude::Elapsed;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::time::Sleep;

use crate::limits::{Refusal, RejectReason};

/// A table of the bytes that are ASCII letters or digits or match
/// `$pat` (a look-up a byte: the guard's byte classes).
macro_rules! alphanumeric_and {
    ($pat:pat) => {{
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            t[b] = c.is_ascii_alphanumeric() || matches!(c, $pat);
            b += 1;
        }
        t
    }};
}

mod chunked;
mod inspect;
mod lines;
mod target;

pub use chunked::ChunkScan;
pub use inspect::{head_end, inspect, Framing, Head, MAX_HEADERS};
use inspect::{inspect_scanned, trim};
use lines::{HeadScan, LineIter};

/// How often a connection waiting idle for its next request looks whether
/// the server has begun to stop.
const SHUTDOWN_CHECK: Duration = Duration::from_secs(1);

/// Limits on one request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_header_size: usize,
    /// Time for the whole header, from the request's first byte (or from
    /// the connection's accept, for its first request).
    pub header_timeout: Duration,
    /// Time to wait for the first byte of a later request.
    pub idle: Duration,
    /// Bodies up to this size are read before the request goes on.
    pub buffer_size: usize,
    pub body_idle: Duration,
    pub body_total: Duration,
}

/// What reading a request produced, with its bytes (the tests' form).
#[cfg(test)]
#[derive(Debug)]
pub enum Read {
    /// A request: `buf[..end]` is its header and the part of its body
    /// read so far (all of it when `rest` is [`Rest::Done`]); bytes past
    /// `end` belong to the next request.
    Request {
        buf: BytesMut,
        head: Head,
        end: usize,
        rest: Rest,
    },
    /// The connection ended, or stayed idle between requests.
    Closed,
    /// A request the gateway answers itself (408, 400, 431), with the
    /// request id the client sent when there is a well-formed one.
    Refused(Refusal, Option<String>),
}

/// What of a request is still to come from the connection once the bytes
/// read by the guard are consumed.
#[derive(Debug)]
pub enum Rest {
    /// Nothing: the request is complete.
    Done,
    /// This many bytes of a `Content-Length` body.
    Length(u64),
    /// The rest of a chunked body; the scan finds its end.
    Chunked(ChunkScan),
    /// Everything: a malformed chunked body (Pingora's to refuse), or an
    /// upgrade once answered `101` (the bytes are the new protocol's).
    Passthrough,
}

/// What [`read`] produced; the bytes are the caller's.
#[derive(Debug)]
pub enum Step {
    Request { head: Head, end: usize, rest: Rest },
    Closed,
    Refused(Refusal),
}

fn refusal(reason: RejectReason, message: impl Into<String>) -> Step {
    Step::Refused(Refusal::new(reason, message))
}

/// [`read`], with the bytes and the request id of a refusal in what it
/// produced (the tests' form).
#[cfg(test)]
pub async fn read_request<S>(
    stream: &mut S,
    mut buf: BytesMut,
    limits: Limits,
    first_request: bool,
    shutdown: &ShutdownWatch,
) -> Read
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut idle = IdleWait::default();
    match read(stream, &mut buf, limits, first_request, shutdown, &mut idle).await {
        Step::Request { head, end, rest } => Read::Request {
            buf,
            head,
            end,
            rest,
        },
        Step::Closed => Read::Closed,
        Step::Refused(r) => Read::Refused(r, find_request_id(&buf)),
    }
}

/// Reads the next request from `stream` into `buf`, which holds the bytes
/// a previous request left over: `buf[..end]` is its header and the part
/// of its body read so far; bytes past `end` belong to the next request.
/// A connection waiting for a request's first byte is closed once
/// `shutdown` says the server is stopping. (The caller keeps the bytes:
/// one future, not one in another, a request.)
pub async fn read<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    limits: Limits,
    first_request: bool,
    shutdown: &ShutdownWatch,
    idle: &mut IdleWait,
) -> Step
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The header: its first byte within `idle` (a later request) or the
    // whole of it within `header_timeout` of the accept (the first). A
    // later request's deadline is taken when it first has to wait for the
    // rest of its header (microseconds after its first byte): a header
    // that came whole reads no clock.
    let mut deadline = first_request.then(|| Instant::now() + limits.header_timeout);
    if buf.is_empty() {
        buf.reserve(4096);
        // The wait for a request's first byte (a later request's within
        // `idle`; the first's within `header_timeout`, which its whole
        // header is held to), in slices of at most `SHUTDOWN_CHECK`:
        // between two, a server that has begun to stop closes the
        // connection (as Pingora's own keep-alive loop does) instead of
        // holding it until its grace period ends (found by a
        // hostile-client run: a connection that had sent nothing was held
        // on SIGTERM). A request that comes within the first slice, as
        // nearly every one does, costs nothing more (watching `shutdown`
        // in a `select!` cost ~440 instructions a request:
        // scripts/callgrind).
        let mut left = match first_request {
            true => limits.header_timeout,
            false => limits.idle,
        };
        loop {
            let slice = left.min(SHUTDOWN_CHECK);
            match idle.within(slice, stream.read_buf(buf)).await {
                Some(Ok(0)) | Some(Err(_)) => return Step::Closed,
                Some(Ok(_)) => break,
                None => {
                    left = left.saturating_sub(slice);
                    if left.is_zero() || *shutdown.borrow() {
                        return Step::Closed;
                    }
                }
            }
        }
    }
    let mut scan = HeadScan::default();
    let len = loop {
        if let Some(end) = scan.feed(buf) {
            if end > limits.max_header_size {
                return too_large(limits);
            }
            break end;
        }
        if buf.len() > limits.max_header_size {
            return too_large(limits);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + limits.header_timeout);
        match until(deadline, stream.read_buf(buf)).await {
            // Not a byte: closed without an answer, as nginx does.
            Err(_) if buf.iter().all(|b| matches!(b, b'\r' | b'\n')) => return Step::Closed,
            Err(_) => {
                return refusal(
                    RejectReason::RequestTimeout,
                    format!(
                        "the request header was not received within {:?}",
                        limits.header_timeout
                    ),
                )
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Step::Closed,
            Ok(Ok(_)) => {}
        }
    };
    let mut head = match inspect_scanned(buf, len, &scan) {
        Ok(h) => h,
        Err(r) => return Step::Refused(r),
    };
    // The body: read here when it is small enough (and ends in a way this
    // can tell), else it streams.
    let read_here = match head.framing {
        Framing::None => false,
        Framing::Length(n) => n <= limits.buffer_size as u64,
        Framing::Chunked => true,
    };
    if read_here || !head.http11 {
        continue_if_expected(stream, buf, &mut head).await;
    }
    let len = head.len;
    let (end, rest) = match head.framing {
        // An upgrade (WebSocket) too: the bytes past it wait for the
        // answer (the fence lets them through on a `101`).
        Framing::None => (len, Rest::Done),
        Framing::Length(n) if n <= limits.buffer_size as u64 => {
            let end = len + n as usize;
            match read_until(stream, buf, limits, |b| (b.len() >= end).then_some(end)).await {
                Ok(e) => (e, Rest::Done),
                Err(r) => return r,
            }
        }
        // Too large to hold: what arrived with the header goes first, the
        // rest streams.
        Framing::Length(n) => {
            let here = ((buf.len() - len) as u64).min(n);
            let rest = match n - here {
                // All of it came with the header: nothing is left to read
                // for this request (a `Length(0)` would read on).
                0 => Rest::Done,
                left => Rest::Length(left),
            };
            (len + here as usize, rest)
        }
        Framing::Chunked => {
            let mut scan = ChunkScan::default();
            let mut malformed = false;
            let r = read_until(stream, buf, limits, |b| {
                let seen = scan.seen();
                match scan.advance(&b[len + seen..]) {
                    Ok(Some(n)) => Some(len + n),
                    Ok(None) if b.len() - len > limits.buffer_size => Some(usize::MAX),
                    Ok(None) => None,
                    Err(chunked::Malformed) => {
                        malformed = true;
                        Some(usize::MAX)
                    }
                }
            })
            .await;
            if malformed {
                return refusal(RejectReason::BadRequest, "malformed chunked body");
            }
            match r {
                // Too large to hold: the scan goes on as the rest streams.
                Ok(usize::MAX) => (buf.len(), Rest::Chunked(scan)),
                Ok(e) => (e, Rest::Done),
                Err(r) => return r,
            }
        }
    };
    Step::Request { head, end, rest }
}

/// The well-formed `X-Request-Id` among the header lines in `buf`.
pub fn find_request_id(buf: &[u8]) -> Option<String> {
    let end = head_end(buf, 0).unwrap_or(buf.len());
    let lines = LineIter { buf, pos: 0, end };
    lines
        .filter_map(|(line, _)| {
            let colon = memchr::memchr(b':', line)?;
            line[..colon]
                .eq_ignore_ascii_case(b"x-request-id")
                .then(|| trim(&line[colon + 1..]))
        })
        .find(|v| crate::proxy::headers::valid_request_id(v))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn too_large(limits: Limits) -> Step {
    refusal(
        RejectReason::HeadersTooLarge,
        format!(
            "request headers are larger than {} bytes",
            limits.max_header_size
        ),
    )
}

/// Removes the `Expect: 100-continue` lines of a request whose body is read
/// here (or of an HTTP/1.0 one, which may not be asked to wait), so that
/// the upstream is not asked again; when no byte of the body has come yet,
/// answers the HTTP/1.1 client's expectation itself.
async fn continue_if_expected<S>(stream: &mut S, buf: &mut BytesMut, head: &mut Head)
where
    S: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    if head.expect_continue.is_empty() {
        return;
    }
    // Last first, so that the earlier ranges stay where they are.
    for range in std::mem::take(&mut head.expect_continue).into_iter().rev() {
        let tail = buf.split_off(range.end);
        buf.truncate(range.start);
        buf.extend_from_slice(&tail);
        head.len -= range.len();
    }
    let waiting = buf.len() == head.len && head.framing != Framing::None;
    if head.http11 && waiting {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        let _ = stream.flush().await;
    }
}

/// Reads into `buf` until `done` says where the request ends, within the
/// body deadlines: no pause longer than `body_idle`, all of it within
/// `body_total`.
async fn read_until<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    limits: Limits,
    mut done: impl FnMut(&[u8]) -> Option<usize>,
) -> Result<usize, Step>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let total = Instant::now() + limits.body_total;
    loop {
        if let Some(end) = done(buf) {
            return Ok(end);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let idle = (Instant::now() + limits.body_idle).min(total);
        match until(idle, stream.read_buf(buf)).await {
            Err(_) => {
                return Err(refusal(
                    RejectReason::RequestTimeout,
                    "the request body was not received in time",
                ))
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Step::Closed),
            Ok(Ok(_)) => {}
        }
    }
}

/// The timer a connection waits for its next request on, kept from one
/// request to the next. A wait that has to wait moves the timer's
/// deadline later, which on a timer tokio already holds is one atomic
/// exchange: the timer is registered once for the connection (and again
/// only after it fires), where a new timer each wait (Pingora's fast
/// timer or tokio's) is registered, subscribed to and dropped per request
/// (~1 400 instructions a request under `scripts/callgrind`). A deadline
/// that passes while the connection is busy with a request only wakes
/// its task once, for nothing.
#[derive(Default)]
pub struct IdleWait {
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleWait {
    /// `fut`, or `None` when it has not finished within `wait` of its
    /// first `Pending` (a future ready at once reads no clock and touches
    /// no timer).
    async fn within<F: Future>(&mut self, wait: Duration, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let timer = &mut self.timer;
        let mut armed = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            let t = match timer {
                Some(t) if armed => t,
                Some(t) => {
                    t.as_mut().reset(tokio::time::Instant::now() + wait);
                    t
                }
                None => timer.insert(Box::pin(tokio::time::sleep(wait))),
            };
            armed = true;
            t.as_mut().poll(cx).map(|()| None)
        })
        .await
    }
}

/// `fut`, given up at `deadline`. On Pingora's timer, which rounds
/// deadlines up to 10 ms and registers one in a fraction of what a new
/// tokio timer costs: for the rest of a header, and a body, that did not
/// come whole (a kept-alive connection's wait for its next request, the
/// wait nearly every request has, is on its [`IdleWait`]).
fn until<F: Future>(deadline: Instant, fut: F) -> impl Future<Output = Result<F::Output, Elapsed>> {
    fast_timeout(deadline.saturating_duration_since(Instant::now()), fut)
}

#[cfg(test)]
mod tests;
