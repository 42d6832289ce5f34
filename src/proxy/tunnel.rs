//! The byte relay of an upgraded connection (a WebSocket tunnel): both directions copied at once,
//! each side's end of stream passed on as a half-close, the whole bounded by an idle timeout and
//! by the drain's cut.
//!
//! Our own loop rather than `tokio::io::copy_bidirectional`: the access log wants the bytes of
//! each direction even when the tunnel is cut, who closed first, and an idle timer that any byte
//! in either direction resets.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Who ended a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// The client closed (or reset) its side first.
    Client,
    /// The upstream closed (or reset) its side first.
    Upstream,
    /// No byte either way for the route's `tunnel_idle_timeout`.
    IdleTimeout,
    /// The drain's `shutdown_timeout` ran out.
    Shutdown,
}

impl ClosedBy {
    pub const ALL: [ClosedBy; 4] = [
        ClosedBy::Client,
        ClosedBy::Upstream,
        ClosedBy::IdleTimeout,
        ClosedBy::Shutdown,
    ];

    /// The word in the access log (`tunnel.closed_by`) and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Client => "client",
            ClosedBy::Upstream => "upstream",
            ClosedBy::IdleTimeout => "idle_timeout",
            ClosedBy::Shutdown => "shutdown",
        }
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelEnd {
    pub closed_by: ClosedBy,
    /// Bytes relayed from the client to the upstream.
    pub client_to_upstream: u64,
    /// Bytes relayed from the upstream to the client.
    pub upstream_to_client: u64,
}

/// Per-direction buffer: 16 KiB, so a 1 MiB WebSocket frame takes 64 reads, not 128.
const BUF: usize = 16 * 1024;

/// Relays bytes between `client` and `upstream` until both sides have closed, one fails, no byte
/// moved for `idle`, or `cut` resolves. Dropping the two ends closes both sockets.
pub async fn relay<C, U>(
    mut client: C,
    mut upstream: U,
    idle: Duration,
    cut: impl Future<Output = ()>,
) -> TunnelEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    tokio::pin!(cut);
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    let mut up = Half::new();
    let mut down = Half::new();
    let mut first_close: Option<ClosedBy> = None;
    let closed_by = std::future::poll_fn(|cx| {
        if cut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(ClosedBy::Shutdown);
        }
        let mut moved = false;
        // A failed read or write ends the tunnel at once; the side it happened on closed it
        // (unless the other side had already closed its half).
        let sides = [
            (&mut up, ClosedBy::Client, ClosedBy::Upstream),
            (&mut down, ClosedBy::Upstream, ClosedBy::Client),
        ];
        for (half, reader, writer) in sides {
            let poll = match reader {
                ClosedBy::Client => half.poll_copy(cx, &mut client, &mut upstream, &mut moved),
                _ => half.poll_copy(cx, &mut upstream, &mut client, &mut moved),
            };
            if half.read_done {
                first_close.get_or_insert(reader);
            }
            match poll {
                Poll::Ready(Err(Fault::Read)) => {
                    return Poll::Ready(first_close.unwrap_or(reader));
                }
                Poll::Ready(Err(Fault::Write)) => {
                    return Poll::Ready(first_close.unwrap_or(writer));
                }
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        if up.finished && down.finished {
            return Poll::Ready(first_close.unwrap_or(ClosedBy::Client));
        }
        if moved {
            timer.as_mut().reset(Instant::now() + idle);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(ClosedBy::IdleTimeout),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    TunnelEnd {
        closed_by,
        client_to_upstream: up.bytes,
        upstream_to_client: down.bytes,
    }
}

/// Which end of a direction failed.
enum Fault {
    Read,
    Write,
}

/// One direction: read from one side into the buffer, write it all to the other.
struct Half {
    buf: Box<[u8]>,
    /// Buffered bytes not yet written: `buf[pos..cap]`.
    pos: usize,
    cap: usize,
    /// The reader reached end of stream.
    read_done: bool,
    /// Written bytes not yet flushed.
    need_flush: bool,
    /// End of stream passed on: the writer was shut down.
    finished: bool,
    bytes: u64,
}

impl Half {
    fn new() -> Half {
        Half {
            buf: vec![0; BUF].into_boxed_slice(),
            pos: 0,
            cap: 0,
            read_done: false,
            need_flush: false,
            finished: false,
            bytes: 0,
        }
    }

    /// Moves bytes until the reader or the writer has to wait; `Ready(Ok)` once the reader's end
    /// of stream has been passed on.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        moved: &mut bool,
    ) -> Poll<Result<(), Fault>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.cap && !self.read_done {
                let mut buf = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => self.read_done = true,
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        (self.pos, self.cap) = (0, n);
                        self.bytes += n as u64;
                        *moved = true;
                    }
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(log(Fault::Read, &err))),
                    Poll::Pending => {
                        // Nothing more to read now: what was written must not sit in a buffer.
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))
                                .map_err(|e| log(Fault::Write, &e))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.cap]))
                        .map_err(|e| log(Fault::Write, &e))?;
                if n == 0 {
                    let err = io::Error::from(io::ErrorKind::WriteZero);
                    return Poll::Ready(Err(log(Fault::Write, &err)));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if self.read_done {
                // Half-close: the other side sees our reader's end of stream, and may still answer.
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))
                    .map_err(|e| log(Fault::Write, &e))?;
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

fn log(fault: Fault, err: &io::Error) -> Fault {
    let side = match fault {
        Fault::Read => "read",
        Fault::Write => "write",
    };
    tracing::debug!(%err, side, "tunnel ended by an error");
    fault
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A tunnel between two in-memory pipes; returns the far ends (client's, upstream's).
    fn start(
        idle: Duration,
    ) -> (
        DuplexStream,
        DuplexStream,
        tokio::task::JoinHandle<TunnelEnd>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (client, client_far) = duplex(64 * 1024);
        let (upstream, upstream_far) = duplex(64 * 1024);
        let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(relay(client, upstream, idle, async {
            if cut_rx.await.is_err() {
                std::future::pending::<()>().await
            }
        }));
        (client_far, upstream_far, task, cut_tx)
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_flow_both_ways_and_the_first_to_close_is_named() {
        let (mut c, mut u, task, _cut) = start(Duration::from_secs(60));
        c.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        u.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        u.write_all(b"world!").await.unwrap();
        let mut buf = [0u8; 6];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"world!");
        // The upstream half-closes: the client sees EOF and may still send.
        u.shutdown().await.unwrap();
        assert_eq!(c.read(&mut buf).await.unwrap(), 0);
        c.write_all(b"bye").await.unwrap();
        let mut buf = [0u8; 3];
        u.read_exact(&mut buf).await.unwrap();
        c.shutdown().await.unwrap();
        let end = task.await.unwrap();
        assert_eq!(
            end,
            TunnelEnd {
                closed_by: ClosedBy::Upstream,
                client_to_upstream: 8,
                upstream_to_client: 6,
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_ends_at_the_idle_timeout_and_traffic_keeps_it_open() {
        let idle = Duration::from_secs(3600);
        let (mut c, mut u, task, _cut) = start(idle);
        let start = Instant::now();
        // Traffic every 40 minutes, either way, keeps it open past the hour...
        for i in 0..3 {
            tokio::time::sleep(Duration::from_secs(40 * 60)).await;
            let mut buf = [0u8; 1];
            if i % 2 == 0 {
                c.write_all(b"x").await.unwrap();
                u.read_exact(&mut buf).await.unwrap();
            } else {
                u.write_all(b"y").await.unwrap();
                c.read_exact(&mut buf).await.unwrap();
            }
            assert!(!task.is_finished(), "still open after {i} exchanges");
        }
        let last = Instant::now();
        // ...then an hour of silence ends it, and both ends see the close.
        let end = task.await.unwrap();
        assert_eq!(end.closed_by, ClosedBy::IdleTimeout);
        assert_eq!(Instant::now() - last, idle);
        assert!(Instant::now() - start > idle * 2);
        assert_eq!((end.client_to_upstream, end.upstream_to_client), (2, 1));
        let mut buf = [0u8; 1];
        assert_eq!(c.read(&mut buf).await.unwrap(), 0);
        assert_eq!(u.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cut_ends_an_open_tunnel() {
        let (mut c, mut u, task, cut) = start(Duration::from_secs(3600));
        c.write_all(b"ab").await.unwrap();
        let mut buf = [0u8; 2];
        u.read_exact(&mut buf).await.unwrap();
        cut.send(()).unwrap();
        let end = task.await.unwrap();
        assert_eq!(end.closed_by, ClosedBy::Shutdown);
        assert_eq!(end.client_to_upstream, 2);
        assert_eq!(c.read(&mut buf).await.unwrap(), 0, "client sees the close");
    }

    #[tokio::test(start_paused = true)]
    async fn a_side_that_goes_away_ends_the_tunnel_and_is_named() {
        let (c, mut u, task, _cut) = start(Duration::from_secs(3600));
        drop(c);
        // The upstream sees the client's end of stream and closes too.
        let mut buf = [0u8; 1];
        assert_eq!(u.read(&mut buf).await.unwrap(), 0);
        drop(u);
        let end = task.await.unwrap();
        assert_eq!(end.closed_by, ClosedBy::Client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_transfer_is_not_held_up_by_the_other_direction() {
        // Both sides send 1 MiB at once before reading: a relay that copied one direction at a
        // time would deadlock on the 64 KiB pipes.
        let (c, u, task, _cut) = start(Duration::from_secs(60));
        let payload: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let (p1, p2) = (payload.clone(), payload.clone());
        let (mut cr, mut cw) = tokio::io::split(c);
        let (mut ur, mut uw) = tokio::io::split(u);
        let w1 = tokio::spawn(async move {
            cw.write_all(&p1).await.unwrap();
            cw
        });
        let w2 = tokio::spawn(async move {
            uw.write_all(&p2).await.unwrap();
            uw
        });
        let mut got_u = vec![0u8; 1 << 20];
        let mut got_c = vec![0u8; 1 << 20];
        let (a, b) = tokio::join!(ur.read_exact(&mut got_u), cr.read_exact(&mut got_c));
        a.unwrap();
        b.unwrap();
        assert!(got_u == payload && got_c == payload);
        drop((cr.unsplit(w1.await.unwrap()), ur.unsplit(w2.await.unwrap())));
        let end = task.await.unwrap();
        assert_eq!(end.client_to_upstream, 1 << 20);
        assert_eq!(end.upstream_to_client, 1 << 20);
    }
}
