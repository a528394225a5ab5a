//! [`Socket`]: a plain TCP connection that a queued write can keep open.
//!
//! A tokio `TcpStream` closes its descriptor when it is dropped, and the kernel hands the
//! lowest free number to the next `accept` or `connect`. A queued write names its connection
//! to the kernel by that number, so the number must stay this connection's until the write's
//! completion has been reaped, whatever happens to the future that queued it (cancelled,
//! leaked). The stream therefore lives in an `Arc`: the connection's owner holds one
//! reference, each queued write another, and the descriptor closes with the last.
//!
//! Why not `dup` the descriptor per write: it costs two system calls (`fcntl` and `close`) on
//! every batched write, while the `Arc` costs one allocation per connection and, per read or
//! write, the uniqueness check below (bench/RESULTS.md, 2026-12-05).
//!
//! Reads and writes take tokio's own path through `&mut TcpStream` whenever this is the only
//! reference, which is always, except while a leaked write still holds one: then they go
//! through the shared path (`poll_*_ready` + `try_*`), which is as correct and costs an extra
//! `EAGAIN` read now and then.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A plain TCP connection whose writes can join a batch ([`super::send`]).
#[derive(Debug)]
pub struct Socket {
    tcp: Arc<TcpStream>,
}

impl Socket {
    pub fn new(tcp: TcpStream) -> Self {
        Self { tcp: Arc::new(tcp) }
    }

    /// The stream, for what takes `&TcpStream` (`try_read`, `peek`, addresses).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Another reference that keeps the descriptor open, for a queued write.
    pub(super) fn share(&self) -> Arc<TcpStream> {
        self.tcp.clone()
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = &mut self.get_mut().tcp;
        if let Some(only) = Arc::get_mut(tcp) {
            return Pin::new(only).poll_read(cx, buf);
        }
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            // `try_read` clears the readiness it used up when it finds nothing.
            match tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let tcp = &mut self.get_mut().tcp;
        if let Some(only) = Arc::get_mut(tcp) {
            return Pin::new(only).poll_write(cx, buf);
        }
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let tcp = &mut self.get_mut().tcp;
        if let Some(only) = Arc::get_mut(tcp) {
            return Pin::new(only).poll_write_vectored(cx, bufs);
        }
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here: a write is the kernel's once it returns.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let tcp = &mut self.get_mut().tcp;
        if let Some(only) = Arc::get_mut(tcp) {
            return Pin::new(only).poll_shutdown(cx);
        }
        Poll::Ready(socket2::SockRef::from(&**tcp).shutdown(Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener) -> (Socket, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Socket::new(client.unwrap()), server.unwrap().0)
    }

    /// Alone (tokio's path) and shared (the other one), bytes go both ways and a shutdown is
    /// a FIN.
    #[tokio::test(flavor = "current_thread")]
    async fn reads_writes_and_shutdown_work_alone_and_shared() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        for shared in [false, true] {
            let (mut socket, mut peer) = pair(&listener).await;
            let _other = shared.then(|| socket.share());
            socket.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            peer.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            peer.write_all(b"pong").await.unwrap();
            socket.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"pong");
            let slices = [io::IoSlice::new(b"ab"), io::IoSlice::new(b"cd")];
            let n = socket.write_vectored(&slices).await.unwrap();
            let mut got = vec![0u8; n];
            peer.read_exact(&mut got).await.unwrap();
            assert_eq!(got, &b"abcd"[..n]);
            socket.shutdown().await.unwrap();
            assert_eq!(peer.read(&mut [0u8; 1]).await.unwrap(), 0, "FIN");
        }
    }

    /// The connection closes with its last reference, not with its owner's.
    #[tokio::test(flavor = "current_thread")]
    async fn the_descriptor_closes_with_the_last_reference() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (socket, mut peer) = pair(&listener).await;
        let other = socket.share();
        drop(socket);
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(100), peer.read(&mut byte)).await;
        assert!(early.is_err(), "closed while referenced: {early:?}");
        drop(other);
        let read = tokio::time::timeout(Duration::from_secs(10), peer.read(&mut byte)).await;
        assert_eq!(
            read.expect("no close").unwrap(),
            0,
            "FIN once the last is gone"
        );
    }
}
