//! Deadlines on an HTTP/2 connection that neither Pingora nor the `h2`
//! crate keeps:
//!
//! - a header block (HEADERS and its CONTINUATIONs) must end within
//!   `header_timeout` of its first frame;
//! - a request body still open (its stream has not ended from the client,
//!   and the gateway has not finished answering it) must not pause longer
//!   than `body_idle_timeout`, nor take longer than `body_timeout` from the
//!   stream's start — else a stalled upload would hold its upstream slot.
//!
//! [`H2Watch`] wraps the connection below the HTTP/2 code and reads the
//! 9-byte frame headers as they pass in both directions (nothing else of
//! the bytes, and nothing is changed). Once a deadline passes it fails the
//! connection's reads, which ends the connection and every stream on it.
//! (Bodies of up to 64 KiB that declare their length are read before any
//! slot is taken, see `phases::read_small_body`; an idle connection is
//! closed by Pingora's HTTP/2 idle timeout, `keepalive_timeout`.)
//!
//! Written by hand: a frame-boundary reader is all this needs, and the
//! deadlines have to be kept below the HTTP/2 implementation.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pingora::protocols::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const PREFACE: usize = 24;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// Request bodies followed at most (the peers' stream limits keep far
/// fewer open).
const MAX_TRACKED: usize = 4096;
/// How much later than a request's own body deadline the connection ends.
const GRACE: Duration = Duration::from_secs(1);

/// The deadlines, from the config.
#[derive(Clone, Copy, Debug)]
pub struct H2Limits {
    pub header_timeout: Duration,
    pub body_idle: Duration,
    pub body_total: Duration,
}

/// Where a frame reader is in one direction's byte stream.
#[derive(Debug)]
enum At {
    /// Inside the client's connection preface (bytes left).
    Preface(usize),
    /// Inside a frame header (the bytes so far).
    FrameHeader([u8; 9], usize),
    /// Inside a frame payload (bytes left).
    Payload(usize),
}

impl At {
    /// Follows `bytes`, calling `frame(kind, flags, stream)` for each frame
    /// header completed.
    fn follow(&mut self, mut bytes: &[u8], mut frame: impl FnMut(u8, u8, u32)) {
        while !bytes.is_empty() {
            match self {
                At::Preface(left) | At::Payload(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        *self = At::FrameHeader([0; 9], 0);
                    }
                }
                At::FrameHeader(h, got) => {
                    let n = (9 - *got).min(bytes.len());
                    h[*got..*got + n].copy_from_slice(&bytes[..n]);
                    *got += n;
                    bytes = &bytes[n..];
                    if *got == 9 {
                        let h = *h;
                        let len = (usize::from(h[0]) << 16)
                            | (usize::from(h[1]) << 8)
                            | usize::from(h[2]);
                        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                        frame(h[3], h[4], stream);
                        *self = if len == 0 {
                            At::FrameHeader([0; 9], 0)
                        } else {
                            At::Payload(len)
                        };
                    }
                }
            }
        }
    }
}

/// A request body still arriving.
#[derive(Clone, Copy, Debug)]
struct Body {
    started: Instant,
    last: Instant,
}

/// What the frames seen so far leave to watch.
#[derive(Debug)]
struct Watched {
    limits: H2Limits,
    /// The header block in progress: started when.
    header_block: Option<Instant>,
    /// Open request bodies by stream.
    bodies: HashMap<u32, Body>,
}

impl Watched {
    /// A frame from the client.
    fn client_frame(&mut self, kind: u8, flags: u8, stream: u32, now: Instant) {
        match kind {
            HEADERS | CONTINUATION => {
                if flags & END_HEADERS == 0 {
                    self.header_block.get_or_insert(now);
                } else {
                    self.header_block = None;
                }
            }
            _ => {}
        }
        let ends = flags & END_STREAM != 0;
        match kind {
            HEADERS if ends => {
                self.bodies.remove(&stream);
            }
            // A request whose body follows (or trailers without the end,
            // which the h2 crate refuses anyway).
            HEADERS if self.bodies.len() < MAX_TRACKED => {
                self.bodies.entry(stream).or_insert(Body {
                    started: now,
                    last: now,
                });
            }
            DATA if ends => {
                self.bodies.remove(&stream);
            }
            DATA => {
                if let Some(b) = self.bodies.get_mut(&stream) {
                    b.last = now;
                }
            }
            RST_STREAM => {
                self.bodies.remove(&stream);
            }
            _ => {}
        }
    }

    /// A frame from the gateway: once it has answered a stream in full (or
    /// reset it), that stream's request body holds nothing upstream.
    fn gateway_frame(&mut self, kind: u8, flags: u8, stream: u32) {
        let done = matches!(kind, HEADERS | DATA) && flags & END_STREAM != 0;
        if done || kind == RST_STREAM {
            self.bodies.remove(&stream);
        }
    }

    /// The earliest deadline, and what it is for.
    fn next_deadline(&self) -> Option<(Instant, &'static str)> {
        let header = self.header_block.map(|t| {
            (
                t + self.limits.header_timeout,
                "an HTTP/2 header block did not end in time",
            )
        });
        // A second later than a stream's own deadline, so that a body the
        // gateway reads itself (phases::read_small_body) gets its 408.
        let (idle, total) = (
            self.limits.body_idle + GRACE,
            self.limits.body_total + GRACE,
        );
        let body = self
            .bodies
            .values()
            .map(|b| (b.last + idle).min(b.started + total))
            .min()
            .map(|d| (d, "an HTTP/2 request body was not received in time"));
        match (header, body) {
            (Some(h), Some(b)) => Some(if h.0 <= b.0 { h } else { b }),
            (h, b) => h.or(b),
        }
    }
}

/// An HTTP/2 connection with deadlines on its header blocks and request
/// bodies; see the module documentation.
pub struct H2Watch {
    inner: Stream,
    reading: At,
    writing: At,
    watched: Watched,
    timer: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for H2Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Watch")
            .field("inner", &self.inner)
            .finish()
    }
}

impl H2Watch {
    pub fn new(inner: Stream, limits: H2Limits) -> Self {
        H2Watch {
            inner,
            reading: At::Preface(PREFACE),
            writing: At::FrameHeader([0; 9], 0),
            watched: Watched {
                limits,
                header_block: None,
                bodies: HashMap::new(),
            },
            timer: None,
        }
    }

    fn observe_read(&mut self, bytes: &[u8], now: Instant) {
        let watched = &mut self.watched;
        self.reading.follow(bytes, |kind, flags, stream| {
            watched.client_frame(kind, flags, stream, now)
        });
    }

    fn observe_written(&mut self, bytes: &[u8]) {
        let watched = &mut self.watched;
        self.writing.follow(bytes, |kind, flags, stream| {
            watched.gateway_frame(kind, flags, stream)
        });
    }
}

fn expired(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

impl AsyncRead for H2Watch {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some((deadline, what)) = this.watched.next_deadline() {
            if deadline <= Instant::now() {
                return Poll::Ready(Err(expired(what)));
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled()[before..].to_vec();
                this.observe_read(&read, Instant::now());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // Wake up at the next deadline even when nothing arrives.
                let Some((deadline, what)) = this.watched.next_deadline() else {
                    this.timer = None;
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(expired(what))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for H2Watch {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.observe_written(&buf[..n]);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            let mut left = n;
            for b in bufs {
                if left == 0 {
                    break;
                }
                let k = left.min(b.len());
                self.observe_written(&b[..k]);
                left -= k;
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

super::wrap::delegate_transport!(H2Watch);

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, len: usize) -> Vec<u8> {
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend(std::iter::repeat_n(0u8, len));
        f
    }

    const LIMITS: H2Limits = H2Limits {
        header_timeout: Duration::from_secs(10),
        body_idle: Duration::from_secs(2),
        body_total: Duration::from_secs(30),
    };

    fn watch() -> H2Watch {
        let (a, _b) = tokio::io::duplex(64);
        let inner: Stream = Box::new(a);
        H2Watch::new(inner, LIMITS)
    }

    fn deadline(w: &H2Watch) -> Option<Instant> {
        w.watched.next_deadline().map(|d| d.0)
    }

    #[tokio::test]
    async fn follows_header_blocks_across_reads() {
        let mut w = watch();
        let t0 = Instant::now();
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, 0, 6)); // SETTINGS
        bytes.extend(frame(HEADERS, END_STREAM, 1, 20)); // no END_HEADERS
                                                         // Byte by byte: frame boundaries across reads.
        for b in &bytes {
            w.observe_read(&[*b], t0);
        }
        assert_eq!(deadline(&w), Some(t0 + LIMITS.header_timeout));
        w.observe_read(&frame(CONTINUATION, 0, 1, 5), t0);
        assert!(deadline(&w).is_some());
        w.observe_read(&frame(CONTINUATION, END_HEADERS, 1, 5), t0);
        assert_eq!(deadline(&w), None);
        // A whole request in one frame leaves nothing to watch.
        w.observe_read(&frame(HEADERS, END_HEADERS | END_STREAM, 3, 10), t0);
        assert_eq!(deadline(&w), None);
    }

    #[tokio::test]
    async fn open_request_bodies_have_deadlines_until_they_end() {
        let mut w = watch();
        let t0 = Instant::now();
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(HEADERS, END_HEADERS, 1, 4)); // body follows
        w.observe_read(&bytes, t0);
        assert_eq!(deadline(&w), Some(t0 + LIMITS.body_idle + GRACE));
        // DATA moves the idle deadline; the end of the stream clears it.
        let t1 = t0 + Duration::from_secs(1);
        w.observe_read(&frame(DATA, 0, 1, 100), t1);
        assert_eq!(deadline(&w), Some(t1 + LIMITS.body_idle + GRACE));
        w.observe_read(&frame(DATA, END_STREAM, 1, 0), t1);
        assert_eq!(deadline(&w), None);
        // Answered in full by the gateway: nothing held upstream.
        w.observe_read(&frame(HEADERS, END_HEADERS, 3, 4), t1);
        assert!(deadline(&w).is_some());
        w.observe_written(&frame(0x4, 0, 0, 0));
        w.observe_written(&frame(HEADERS, END_HEADERS | END_STREAM, 3, 7));
        assert_eq!(deadline(&w), None);
        // A client reset ends it too.
        w.observe_read(&frame(HEADERS, END_HEADERS, 5, 4), t1);
        w.observe_read(&frame(RST_STREAM, 0, 5, 4), t1);
        assert_eq!(deadline(&w), None);
    }
}
