//! The admin listeners' own limits (REST and gRPC alike): at most a fixed
//! number of connections each, and each closed once it has been idle —
//! no byte read or written — for `server.keepalive_timeout`. Connections
//! over the cap are closed as soon as they are accepted. So idle, slow or
//! abandoned clients of the admin ports hold a bounded number of file
//! descriptors, never the ones the proxy needs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The listener bound before the server started (taken from `slot`), or,
/// during a binary upgrade, one bound as soon as the old process lets the
/// port go. `None`: shutdown came first, or the listener cannot be used.
pub async fn take_or_bind(
    slot: &std::sync::Mutex<Option<std::net::TcpListener>>,
    addr: SocketAddr,
    shutdown: &mut pingora::server::ShutdownWatch,
) -> Option<TcpListener> {
    #[allow(clippy::disallowed_methods)] // taken once, at start
    let taken = slot.lock().ok().and_then(|mut l| l.take());
    if let Some(l) = taken {
        return TcpListener::from_std(l)
            .map_err(|e| tracing::error!("admin listener {addr}: {e}"))
            .ok();
    }
    loop {
        if let Ok(l) = TcpListener::bind(addr).await {
            return Some(l);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shutdown.changed() => return None,
        }
    }
}

/// A listener that admits at most `max` connections at once.
pub struct Limited {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl Limited {
    pub fn new(listener: TcpListener, max: usize, idle: Duration) -> Self {
        Limited {
            listener,
            permits: Arc::new(Semaphore::new(max)),
            idle,
        }
    }

    /// The next connection under the cap. Those over it are closed at once;
    /// an accept error (out of file descriptors) waits a moment and retries.
    pub async fn accept(&self) -> (Guarded, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((io, addr)) => match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let _ = io.set_nodelay(true);
                        return (Guarded::new(io, permit, self.idle), addr);
                    }
                    Err(_) => drop(io),
                },
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// One admitted connection: holds its place under the cap until dropped,
/// and fails its next read once it has been idle for `idle`.
pub struct Guarded {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Guarded {
    fn new(io: TcpStream, permit: OwnedSemaphorePermit, idle: Duration) -> Self {
        Guarded {
            io,
            _permit: permit,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn active(&mut self) {
        let at = Instant::now() + self.idle;
        self.deadline.as_mut().reset(at);
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "admin connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                this.active();
            }
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
