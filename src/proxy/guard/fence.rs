//! The stream Pingora reads one HTTP/1 request's body from (its header
//! Pingora is handed as it was read: its pipelined prefix): the body bytes
//! the guard read ahead first, then the rest of the request from the
//! connection — and nothing past its end. Bytes that arrive after it (the
//! next pipelined request) are kept here for the guard, never shown to
//! Pingora, which would take them for data sent after the body and fail
//! the request it is answering.
//!
//! ```text
//! connection ─▶ [header read by the guard] ─▶ Pingora (parsed in place)
//!            ─▶ [ahead: body bytes read by the guard] ─▶ Pingora
//!            ─▶ [rest of the body: Content-Length / chunked end] ─▶ Pingora
//!            ─▶ [next request's bytes] ─▶ kept (`into_parts`)
//! ```
//!
//! An end of stream or an error is passed on at any time, so Pingora still
//! sees a client that leaves while it waits for the upstream.
//!
//! A request that asks for an upgrade (WebSocket) is fenced the same way
//! until its answer's status goes out through the fence: a `101` opens the
//! tunnel, and the bytes kept past the request (the new protocol's, sent
//! before the switch) and all that follow are Pingora's to read; any other
//! final status leaves them the next request's (RFC 9110 §7.8).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use pingora::protocols::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio_util::io::poll_read_buf;

use super::http1::Rest;

/// Bytes of the next request kept before the fence stops reading ahead
/// (the next request is read by the guard, under its own limits).
const NEXT_LIMIT: usize = 64 * 1024;
/// Room made for one read from the connection.
const READ_SIZE: usize = 8 * 1024;
/// Room below which a read past the request makes more (the guard reads a
/// request's header into 4 KiB).
const MIN_READ: usize = 1024;
/// A request's buffer up to this size is kept for the next request; a
/// larger one (a body read whole) is not kept by an idle connection.
pub(super) const REUSE_MAX: usize = 16 * 1024;

/// One request's view of a connection; see the module documentation.
pub struct Fence {
    inner: Stream,
    /// Bytes of the request read from the connection, not yet by Pingora
    /// (first those the guard read, then each read of the body's rest).
    ahead: BytesMut,
    rest: Rest,
    /// Bytes past the request: the next one's.
    next: BytesMut,
    /// The connection ended after the request.
    ended: bool,
    /// `ahead` is small enough to keep for the next request.
    reusable: bool,
    /// How far the answer to an upgrade request has been written.
    upgrade: Upgrade,
}

/// Where the fence is in the answer to a request that asked for an
/// upgrade: only its final status line decides what the bytes past the
/// request are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    /// No upgrade asked, or the answer's final status is known.
    Off,
    /// `n` bytes of an answer's status line written (`HTTP/1.1 101`: the
    /// code is bytes 9 to 11); the code's digits so far.
    Status { n: u8, code: [u8; 3] },
    /// In an interim (1xx) answer's header: `matched` bytes of the blank
    /// line that ends it; the final answer follows.
    Interim { matched: u8 },
}

/// Bytes of a status line up to the end of its code (`HTTP/1.1 101`).
const STATUS_CODE_END: u8 = 12;

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("inner", &self.inner)
            .field("ahead", &self.ahead.len())
            .field("next", &self.next.len())
            .finish()
    }
}

impl Fence {
    pub fn new(inner: Stream, ahead: BytesMut, rest: Rest, next: BytesMut) -> Self {
        let mut f = Fence {
            inner,
            ahead: BytesMut::new(),
            rest: Rest::Done,
            next: BytesMut::new(),
            ended: false,
            reusable: false,
            upgrade: Upgrade::Off,
        };
        f.set_request(ahead, rest, next);
        f
    }

    /// The connection, and the bytes of the next request read so far (in
    /// the buffer the request came in, when nothing was read past it and
    /// Pingora has read it all: the next request is read into it).
    pub fn into_parts(mut self) -> (Stream, BytesMut) {
        self.reuse_ahead();
        (self.inner, self.next)
    }

    /// The connection, for the guard to read the next request from (the
    /// fence shows Pingora nothing until [`Fence::set_request`]).
    pub fn stream_mut(&mut self) -> &mut Stream {
        &mut self.inner
    }

    /// The bytes of the next request read so far, as [`Fence::into_parts`]
    /// gives them, leaving the fence over the connection alone: one fence
    /// (one allocation, boxed as Pingora's stream) serves every request of
    /// a connection.
    pub fn take_next(&mut self) -> BytesMut {
        self.reuse_ahead();
        self.ahead = BytesMut::new();
        self.rest = Rest::Done;
        self.reusable = false;
        std::mem::take(&mut self.next)
    }

    /// The next request: what [`Fence::new`] takes besides the connection.
    pub fn set_request(&mut self, ahead: BytesMut, rest: Rest, next: BytesMut) {
        self.reusable = ahead.capacity() > 0 && ahead.capacity() <= REUSE_MAX;
        self.ahead = ahead;
        self.rest = rest;
        self.next = next;
        self.ended = false;
        self.upgrade = Upgrade::Off;
    }

    /// The request set asked for an upgrade: the bytes past it wait for
    /// the answer's status (see the module documentation).
    pub fn await_upgrade(&mut self) {
        self.upgrade = Upgrade::Status { n: 0, code: [0; 3] };
    }

    /// Follows the answer to an upgrade request through `written`, the
    /// bytes the connection took, and opens the tunnel on a `101`.
    fn watch(&mut self, written: &[u8]) {
        for &b in written {
            self.upgrade = match self.upgrade {
                Upgrade::Off => return,
                Upgrade::Status { n, mut code } => {
                    if let Some(digit) = code.get_mut(usize::from(n).wrapping_sub(9)) {
                        *digit = b;
                    }
                    match (n + 1, code) {
                        (STATUS_CODE_END, [b'1', b'0', b'1']) => {
                            self.open();
                            Upgrade::Off
                        }
                        (STATUS_CODE_END, [b'1', ..]) => Upgrade::Interim { matched: 0 },
                        (STATUS_CODE_END, _) => Upgrade::Off,
                        (n, code) => Upgrade::Status { n, code },
                    }
                }
                Upgrade::Interim { matched } => match (matched, b) {
                    (3, b'\n') => Upgrade::Status { n: 0, code: [0; 3] },
                    (0 | 2, b'\r') | (1, b'\n') => Upgrade::Interim {
                        matched: matched + 1,
                    },
                    (_, b'\r') => Upgrade::Interim { matched: 1 },
                    _ => Upgrade::Interim { matched: 0 },
                },
            };
        }
    }

    /// The upgrade was accepted: every byte from here on is the new
    /// protocol's, those kept past the request first.
    fn open(&mut self) {
        let next = std::mem::take(&mut self.next);
        match self.ahead.is_empty() {
            true => self.ahead = next,
            false => self.ahead.extend_from_slice(&next),
        }
        self.rest = Rest::Passthrough;
    }

    /// Moves the request's buffer to `next` once Pingora has read it all,
    /// when `next` has no buffer of its own: reading on into it takes no
    /// allocation.
    fn reuse_ahead(&mut self) {
        if self.reusable && self.next.capacity() == 0 && self.ahead.is_empty() {
            self.next = std::mem::take(&mut self.ahead);
        }
    }

    /// After the request: reads ahead into `next` (so an end of stream is
    /// noticed), never into Pingora's buffer.
    fn poll_after(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            if self.next.len() >= NEXT_LIMIT {
                // Pingora is woken by whatever else it waits on (the
                // upstream); the rest stays in the socket.
                return Poll::Pending;
            }
            self.reuse_ahead();
            if self.next.capacity() - self.next.len() < MIN_READ {
                self.next.reserve(READ_SIZE);
            }
            match poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.next) {
                Poll::Ready(Ok(0)) => self.ended = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Reads the body's next bytes into `ahead`, moving whatever follows
    /// the body's end into `next`. `Ok(false)`: the connection ended.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        self.ahead.reserve(READ_SIZE);
        let n = match poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.ahead) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        if n == 0 {
            return Poll::Ready(Ok(false));
        }
        match &mut self.rest {
            Rest::Length(left) => {
                let here = (*left).min(n as u64);
                *left -= here;
                if *left == 0 {
                    let past = self.ahead.split_off(here as usize);
                    self.next.extend_from_slice(&past);
                    self.rest = Rest::Done;
                }
            }
            Rest::Chunked(scan) => {
                let seen = scan.seen();
                match scan.advance(&self.ahead) {
                    Ok(Some(end)) => {
                        let past = self.ahead.split_off(end - seen);
                        self.next.extend_from_slice(&past);
                        self.rest = Rest::Done;
                    }
                    Ok(None) => {}
                    // Malformed: Pingora's parser refuses it and the
                    // connection ends; every byte is its to see.
                    Err(_) => self.rest = Rest::Passthrough,
                }
            }
            Rest::Done | Rest::Passthrough => {}
        }
        Poll::Ready(Ok(true))
    }
}

impl AsyncRead for Fence {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // Until there are bytes of the request to give: a read of the
        // body may bring none of them (all the next request's, when the
        // body ended where the read began), and an empty answer would be
        // an end of stream to Pingora.
        while this.ahead.is_empty() {
            match this.rest {
                Rest::Done => return this.poll_after(cx),
                Rest::Passthrough => return Pin::new(&mut this.inner).poll_read(cx, buf),
                Rest::Length(_) | Rest::Chunked(_) => match this.poll_body(cx) {
                    Poll::Ready(Ok(true)) => {}
                    Poll::Ready(Ok(false)) => return Poll::Ready(Ok(())),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
        let n = this.ahead.len().min(buf.remaining());
        buf.put_slice(&this.ahead[..n]);
        this.ahead.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Fence {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), false) = (&written, this.upgrade == Upgrade::Off) {
            this.watch(&buf[..*n]);
        }
        written
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
        // While an upgrade's answer is watched, one slice at a time.
        if self.upgrade != Upgrade::Off {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

super::wrap::delegate_transport!(Fence);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::guard::http1::ChunkScan;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn fence(rest: Rest, ahead: &[u8], later: &[u8]) -> (Fence, tokio::io::DuplexStream) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(later).await.unwrap();
        let f = Fence::new(
            Box::new(server),
            BytesMut::from(ahead),
            rest,
            BytesMut::new(),
        );
        (f, client)
    }

    /// Reads what Pingora would see, until the fence has nothing more for
    /// the request (a read that stays pending).
    async fn seen(f: &mut Fence) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        while let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), f.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[tokio::test]
    async fn a_length_body_ends_where_it_says() {
        let (mut f, _c) = fence(Rest::Length(3), b"HEAD\r\n\r\nab", b"cdeGET /next").await;
        assert_eq!(seen(&mut f).await, b"HEAD\r\n\r\nabcde");
        let (_, next) = f.into_parts();
        assert_eq!(&next[..], b"GET /next");
    }

    #[tokio::test]
    async fn a_chunked_body_ends_where_its_last_chunk_does() {
        let mut scan = ChunkScan::default();
        assert_eq!(scan.advance(b"3\r\nab").unwrap(), None);
        let (mut f, _c) = fence(
            Rest::Chunked(scan),
            b"H\r\n\r\n3\r\nab",
            b"c\r\n0\r\n\r\nGET /n",
        )
        .await;
        assert_eq!(seen(&mut f).await, b"H\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(&f.into_parts().1[..], b"GET /n");
    }

    /// Whether `b` starts inside `range` (an allocation).
    fn inside(b: &BytesMut, range: std::ops::Range<usize>) -> bool {
        range.contains(&(b.as_ptr() as usize))
    }

    #[tokio::test]
    async fn a_small_request_s_buffer_is_read_on_into_and_a_large_one_is_not() {
        for (size, kept) in [(4096, true), (REUSE_MAX + 1, false)] {
            let mut ahead = BytesMut::with_capacity(size);
            ahead.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            let start = ahead.as_ptr() as usize;
            let range = start..start + ahead.capacity();
            let (client, server) = tokio::io::duplex(64 * 1024);
            let mut f = Fence::new(Box::new(server), ahead, Rest::Done, BytesMut::new());
            assert_eq!(seen(&mut f).await, b"GET / HTTP/1.1\r\n\r\n");
            let (_, next) = f.into_parts();
            assert!(next.is_empty());
            assert_eq!(inside(&next, range), kept, "{size}");
            drop(client);
        }
    }

    /// Found by a hostile-client run: a body that ended where a read began
    /// (every byte read the next request's) answered Pingora's read with
    /// nothing, an end of stream, and Pingora dropped the response it was
    /// sending.
    #[tokio::test]
    async fn a_read_that_brings_only_the_next_request_is_no_end_of_stream() {
        let (mut f, _c) = fence(Rest::Length(0), b"", b"GET /next").await;
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(std::time::Duration::from_millis(100), f.read(&mut buf)).await;
        assert!(r.is_err(), "the read must wait, not end: {r:?}");
        assert_eq!(&f.into_parts().1[..], b"GET /next");
    }

    #[tokio::test]
    async fn after_the_request_bytes_are_kept_and_an_end_is_passed_on() {
        let (mut f, c) = fence(Rest::Done, b"GET / HTTP/1.1\r\n\r\n", b"GET /2").await;
        assert_eq!(seen(&mut f).await, b"GET / HTTP/1.1\r\n\r\n");
        drop(c);
        let mut buf = [0u8; 8];
        assert_eq!(f.read(&mut buf).await.unwrap(), 0, "the client left");
        assert_eq!(&f.into_parts().1[..], b"GET /2");
    }

    /// An upgrade request's fence, its answer written as `writes`, and
    /// what Pingora then reads past the request.
    async fn after_answer(writes: &[&[u8]]) -> (Fence, Vec<u8>) {
        let (mut f, mut c) = fence(Rest::Done, b"GET /ws HTTP/1.1\r\n\r\n", b"FRAME1").await;
        f.await_upgrade();
        assert_eq!(seen(&mut f).await, b"GET /ws HTTP/1.1\r\n\r\n");
        for w in writes {
            f.write_all(w).await.unwrap();
        }
        c.write_all(b"FRAME2").await.unwrap();
        let mut out = vec![0u8; 256];
        let n = c.read(&mut out).await.unwrap();
        assert_eq!(
            out[..n],
            writes.concat()[..],
            "the client gets the answer as written"
        );
        let read = seen(&mut f).await;
        (f, read)
    }

    /// Found by a hostile-client run: the bytes after an upgrade request
    /// were all Pingora's, so a request pipelined behind one the upstream
    /// did not switch (a 200) failed as data sent after the body, and so
    /// did WebSocket frames sent before the 101.
    #[tokio::test]
    async fn an_upgrade_s_next_bytes_wait_for_its_answer() {
        // Not switched: they are the next request's.
        let (f, read) = after_answer(&[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]).await;
        assert_eq!(read, b"");
        assert_eq!(&f.into_parts().1[..], b"FRAME1FRAME2");
        // Switched, the status line in pieces: the new protocol's, in order.
        let (_, read) = after_answer(&[b"HTTP/1.1 1", b"01 Switching Protocols\r\n\r\n"]).await;
        assert_eq!(read, b"FRAME1FRAME2");
        // An interim answer first: the final one decides.
        let (_, read) = after_answer(&[
            b"HTTP/1.1 100 Continue\r\n\r",
            b"\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ])
        .await;
        assert_eq!(read, b"FRAME1FRAME2");
        let (f, read) =
            after_answer(&[b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 426 U\r\n\r\n"])
                .await;
        assert_eq!(read, b"");
        assert_eq!(&f.into_parts().1[..], b"FRAME1FRAME2");
    }
}
