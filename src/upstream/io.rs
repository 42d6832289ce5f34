//! A socket wrapper that counts bytes in each direction.
//!
//! The retry rule needs to know, for one attempt, whether any request byte reached the upstream
//! and whether any response byte came back. hyper's errors do not say; the socket does. The
//! connection driver runs in its own task, so the counters are atomics (relaxed: they are only
//! compared before and after an attempt on the same connection).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from and written to one upstream connection so far.
#[derive(Debug, Default)]
pub struct IoStats {
    read: AtomicU64,
    written: AtomicU64,
    /// The first byte the upstream sent, plus one (0: nothing yet). A TLS record type there
    /// (0x15 alert, 0x16 handshake) on a plain connection means the target speaks TLS.
    first: std::sync::atomic::AtomicU16,
}

/// A point-in-time copy of [`IoStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoSnapshot {
    pub read: u64,
    pub written: u64,
}

impl IoStats {
    pub fn snapshot(&self) -> IoSnapshot {
        IoSnapshot {
            read: self.read.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
        }
    }

    /// The first byte read from the connection, if any was.
    pub fn first_byte(&self) -> Option<u8> {
        self.first
            .load(Ordering::Relaxed)
            .checked_sub(1)
            .map(|b| b as u8)
    }
}

/// `T` with every read and write counted into shared [`IoStats`].
#[derive(Debug)]
pub struct CountingIo<T> {
    inner: T,
    stats: Arc<IoStats>,
}

impl<T> CountingIo<T> {
    pub fn new(inner: T) -> (Self, Arc<IoStats>) {
        let stats = Arc::new(IoStats::default());
        let io = CountingIo {
            inner,
            stats: stats.clone(),
        };
        (io, stats)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 && self.stats.read.fetch_add(n as u64, Ordering::Relaxed) == 0 {
            let first = u16::from(buf.filled()[before]) + 1;
            self.stats.first.store(first, Ordering::Relaxed);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.stats.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            self.stats.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
