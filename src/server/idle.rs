//! An idle keep-alive client connection holds its socket and nothing else.
//!
//! hyper's HTTP/1 connection keeps, for its whole life, an 8 KiB read buffer, an 8 KiB write
//! buffer and a box sized for the service's future (~5 KiB for `forward::handle`) — about 21 KiB
//! per connection measured, most of it while the client sends nothing (issue #11). So a
//! connection is served in *phases*: the socket waits for readability on its own; a hyper
//! connection is built when bytes arrive and put down once a response has gone out and the
//! client has nothing more to say, and its buffers are freed. nginx does the same at keep-alive.
//!
//! hyper cannot be told to stop at idle, so [`ClientIo`] tells it the client closed: a read that
//! would wait, when no request is in flight, the last response is flushed and nothing was read
//! since, returns end-of-file — after [`GRACE`], so a client sending requests back to back keeps
//! its hyper connection (rebuilding it per request cost ~15% CPU per request in an A/B with
//! nginx). hyper closes an idle connection on that end-of-file — cleanly, and at no other point
//! can it see one — and [`ClientIo`] keeps hyper's shutdown from reaching the socket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::proxy::relay::{ClientBody, RelayError};

/// How long an idle connection keeps its hyper connection before it is put down.
pub const GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// What the service tells the socket about the connection's requests.
#[derive(Default)]
pub struct Activity {
    /// Requests whose response has not been handed over entirely (the service's future and then
    /// the response body hold a [`Busy`]).
    busy: AtomicUsize,
    /// Set for a `101 Switching Protocols`: the socket now belongs to the upgraded protocol and is
    /// never put down.
    upgraded: AtomicBool,
}

/// One request in flight; dropped with its response body.
pub struct Busy(Arc<Activity>);

impl Activity {
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted busy until hyper drops it.
pub struct Tracked {
    body: ClientBody,
    _busy: Busy,
}

impl Tracked {
    pub fn new(body: ClientBody, busy: Busy) -> Self {
        Self { body, _busy: busy }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client socket as hyper sees it during one phase (see the module docs).
pub struct ClientIo {
    pub stream: TcpStream,
    activity: Arc<Activity>,
    /// Bytes written since the last completed flush.
    wrote: bool,
    /// A response was flushed with no request in flight, and nothing has been read since.
    idle: bool,
    /// End-of-file was reported to put hyper down; the socket stays open.
    pub put_down: bool,
    /// Armed when an idle read first has to wait; put down when it fires.
    grace: Option<Pin<Box<Sleep>>>,
}

impl ClientIo {
    pub fn new(stream: TcpStream, activity: Arc<Activity>) -> Self {
        Self {
            stream,
            activity,
            wrote: false,
            idle: false,
            put_down: false,
            grace: None,
        }
    }

    fn quiet(&self) -> bool {
        self.activity.busy.load(Ordering::Relaxed) == 0
            && !self.activity.upgraded.load(Ordering::Relaxed)
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending if this.idle && this.quiet() => {
                let grace = this
                    .grace
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(GRACE)));
                if grace.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.grace = None;
                this.put_down = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.idle = false;
                this.grace = None;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote = true;
        Pin::new(&mut this.stream).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.stream).poll_flush(cx);
        // hyper flushes the socket only once its own buffer is empty: everything is out.
        if matches!(flushed, Poll::Ready(Ok(()))) && this.wrote && this.quiet() {
            this.wrote = false;
            this.idle = true;
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.put_down {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

impl ClientIo {
    /// Ready for the next phase: the flags of the last one cleared.
    pub fn next_phase(mut self) -> Self {
        self.wrote = false;
        self.idle = false;
        self.put_down = false;
        self.grace = None;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    async fn read_response(client: &mut TcpStream) -> String {
        let mut buf = vec![0u8; 4096];
        let mut text = String::new();
        while !text.ends_with("ok") {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    }

    /// Serves one phase: returns the socket once hyper was put down, `None` when it ended.
    async fn phase(io: ClientIo, activity: &Arc<Activity>) -> Option<ClientIo> {
        let activity = activity.clone();
        let service = hyper::service::service_fn(move |_req| {
            let busy = activity.busy();
            async move {
                let body = ClientBody::full("ok");
                Ok::<_, std::convert::Infallible>(http::Response::new(Tracked::new(body, busy)))
            }
        });
        let mut conn = http1::Builder::new().serve_connection(TokioIo::new(io), service);
        let result = (&mut conn).await;
        let parts = conn.into_parts();
        let io = parts.io.into_inner();
        (result.is_ok() && io.put_down && parts.read_buf.is_empty()).then(|| io.next_phase())
    }

    #[tokio::test]
    async fn idle_connection_is_put_down_after_each_response_and_served_again() {
        let (mut client, server) = pair().await;
        let activity = Arc::new(Activity::default());
        let mut io = ClientIo::new(server, activity.clone());
        for round in 0..3 {
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            let (served, text) = tokio::join!(phase(io, &activity), read_response(&mut client));
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            io = served.unwrap_or_else(|| panic!("round {round}: hyper was not put down"));
            assert_eq!(activity.busy.load(Ordering::Relaxed), 0);
        }
        // Two pipelined requests: both answered in one phase, put down after the second.
        client
            .write_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let (served, first) = tokio::join!(phase(io, &activity), async {
            let first = read_response(&mut client).await;
            let second = if first.matches("HTTP/1.1 200").count() == 2 {
                String::new()
            } else {
                read_response(&mut client).await
            };
            first + &second
        });
        assert_eq!(first.matches("HTTP/1.1 200").count(), 2, "{first}");
        let io = served.expect("put down after the pipelined pair");
        // The client closing is an end, not a put-down.
        drop(client);
        assert!(phase(io, &activity).await.is_none());
    }

    #[tokio::test]
    async fn upgraded_connection_is_never_put_down() {
        let (_client, server) = pair().await;
        let activity = Arc::new(Activity::default());
        activity.upgraded();
        let mut io = ClientIo::new(server, activity);
        io.idle = true;
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(std::time::Duration::from_millis(50), io.read(&mut buf));
        assert!(read.await.is_err(), "an upgraded socket waits for its peer");
        assert!(!io.put_down);
    }
}
