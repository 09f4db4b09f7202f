//! A deadline for an HTTP/2 connection that neither Pingora nor the `h2`
//! crate keeps: a header block (HEADERS and its CONTINUATIONs) must end
//! within `header_timeout` of its first frame. [`H2Watch`] wraps the
//! connection below the HTTP/2 code, reads the frames' 9-byte headers as
//! they pass (nothing else of the bytes, and nothing is changed), and fails
//! the connection's reads once the deadline passes — which ends the
//! connection. (Request bodies get their deadlines where the gateway reads
//! them, before any slot is taken; an idle connection is closed by
//! Pingora's HTTP/2 idle timeout, `keepalive_timeout`.)
//!
//! Written by hand: a frame-boundary reader is all this needs, and the
//! deadline has to be kept below the HTTP/2 implementation.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const PREFACE: usize = 24;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Where the reader is in the byte stream.
#[derive(Debug)]
enum At {
    /// Inside the client's connection preface (bytes left).
    Preface(usize),
    /// Inside a frame header (the bytes so far).
    FrameHeader([u8; 9], usize),
    /// Inside a frame payload (bytes left).
    Payload(usize),
}

/// An HTTP/2 connection with a deadline on its header blocks; see the
/// module documentation.
pub struct H2Watch {
    inner: Stream,
    at: At,
    header_timeout: Duration,
    /// The header block in progress: started when.
    header_block: Option<Instant>,
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
    pub fn new(inner: Stream, header_timeout: Duration) -> Self {
        H2Watch {
            inner,
            at: At::Preface(PREFACE),
            header_timeout,
            header_block: None,
            timer: None,
        }
    }

    /// Follows the frames in bytes the connection just read.
    fn observe(&mut self, mut bytes: &[u8], now: Instant) {
        while !bytes.is_empty() {
            match &mut self.at {
                At::Preface(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.at = At::FrameHeader([0; 9], 0);
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
                        self.frame(h[3], h[4], now);
                        self.at = if len == 0 {
                            At::FrameHeader([0; 9], 0)
                        } else {
                            At::Payload(len)
                        };
                    }
                }
                At::Payload(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.at = At::FrameHeader([0; 9], 0);
                    }
                }
            }
        }
    }

    /// One frame header: a HEADERS without END_HEADERS starts a block, a
    /// CONTINUATION with it ends the block.
    fn frame(&mut self, kind: u8, flags: u8, now: Instant) {
        match kind {
            HEADERS if flags & END_HEADERS == 0 => self.header_block = Some(now),
            HEADERS | CONTINUATION if flags & END_HEADERS != 0 => self.header_block = None,
            _ => {}
        }
    }

    /// The deadline of the header block in progress, if any.
    fn next_deadline(&self) -> Option<Instant> {
        self.header_block.map(|t| t + self.header_timeout)
    }
}

fn expired() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "an HTTP/2 header block did not end within its deadline",
    )
}

impl AsyncRead for H2Watch {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let now = Instant::now();
        if this.next_deadline().is_some_and(|d| d <= now) {
            return Poll::Ready(Err(expired()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled()[before..].to_vec();
                this.observe(&read, Instant::now());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // Wake up at the next deadline even when nothing arrives.
                let Some(deadline) = this.next_deadline() else {
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
                    Poll::Ready(()) => Poll::Ready(Err(expired())),
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for H2Watch {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for H2Watch {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for H2Watch {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<std::sync::Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for H2Watch {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for H2Watch {
    fn get_proxy_digest(
        &self,
    ) -> Option<std::sync::Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for H2Watch {
    fn get_socket_digest(&self) -> Option<std::sync::Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for H2Watch {}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, len: usize) -> Vec<u8> {
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend(std::iter::repeat_n(0u8, len));
        f
    }

    fn watch() -> H2Watch {
        let (a, _b) = tokio::io::duplex(64);
        let inner: Stream = Box::new(a);
        H2Watch::new(inner, Duration::from_secs(10))
    }

    #[tokio::test]
    async fn follows_header_blocks_across_reads() {
        let mut w = watch();
        let t0 = Instant::now();
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, 0, 6)); // SETTINGS
        bytes.extend(frame(HEADERS, 0, 1, 20)); // no END_HEADERS
                                                // Byte by byte: frame boundaries across reads.
        for b in &bytes {
            w.observe(&[*b], t0);
        }
        assert_eq!(w.next_deadline(), Some(t0 + Duration::from_secs(10)));
        w.observe(&frame(CONTINUATION, 0, 1, 5), t0);
        assert!(w.next_deadline().is_some());
        w.observe(&frame(CONTINUATION, END_HEADERS, 1, 5), t0);
        assert_eq!(w.next_deadline(), None);
        // A whole header block in one frame leaves nothing to watch.
        w.observe(&frame(HEADERS, END_HEADERS | 0x1, 3, 10), t0);
        w.observe(&frame(0x0, 0x1, 3, 100), t0);
        assert_eq!(w.next_deadline(), None);
    }
}
