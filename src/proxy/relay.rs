//! The response body on its way to the client.
//!
//! A relayed body streams the upstream's body frame by frame, bounded by an idle timeout between
//! frames. When it ends — read to the end, cut by the upstream, timed out, or dropped because the
//! client went away — it runs its [`Finish`] exactly once: that returns the upstream connection
//! to the pool (only after a complete body) and writes the access-log line.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::outcome::Finish;
use crate::cause::Cause;

/// How a relayed body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Read to the end and handed to the client.
    Complete,
    /// The upstream failed mid-body (reset, truncated, idle timeout).
    Upstream(Cause),
    /// The client stopped reading (connection closed) before the end.
    ClientGone,
}

/// The body type of every response gatewise sends to clients.
pub enum ClientBody {
    /// A response gatewise generated itself.
    Full(Option<Bytes>),
    /// An upstream's body, streamed.
    Relay(Box<Relay>),
}

impl ClientBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ClientBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> Self {
        ClientBody::Full(None)
    }
}

pub struct Relay {
    inner: Incoming,
    idle_timeout: Duration,
    /// Armed the first time the upstream makes us wait: a body that is already buffered (most
    /// small responses) never pays for a timer.
    idle: Option<Pin<Box<Sleep>>>,
    bytes: u64,
    done: Option<Finish>,
}

impl Relay {
    pub fn new(inner: Incoming, idle_timeout: Duration, done: Finish) -> Self {
        Self {
            inner,
            idle_timeout,
            idle: None,
            bytes: 0,
            done: Some(done),
        }
    }

    fn finish(&mut self, end: BodyEnd) {
        if let Some(done) = self.done.take() {
            done.complete(end, self.bytes);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let end = if self.inner.is_end_stream() {
            BodyEnd::Complete
        } else {
            BodyEnd::ClientGone
        };
        self.finish(end);
    }
}

/// The error a client connection sees when an upstream body fails mid-stream.
#[derive(Debug, thiserror::Error)]
#[error("upstream body failed: {0}")]
pub struct RelayError(pub Cause);

impl Body for ClientBody {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        let relay = match self.get_mut() {
            ClientBody::Full(data) => return Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ClientBody::Relay(relay) => relay,
        };
        match Pin::new(&mut relay.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    relay.bytes += data.len() as u64;
                } else if let (Some(trailers), Some(done)) = (frame.trailers_ref(), &mut relay.done)
                {
                    if done.log.grpc {
                        done.log.grpc_status = super::grpc::status_of(trailers);
                    }
                }
                if let Some(idle) = relay.idle.as_mut() {
                    idle.as_mut().reset(Instant::now() + relay.idle_timeout);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                tracing::debug!(%err, "upstream body failed");
                relay.finish(BodyEnd::Upstream(Cause::HttpResponseIncomplete));
                Poll::Ready(Some(Err(RelayError(Cause::HttpResponseIncomplete))))
            }
            Poll::Ready(None) => {
                relay.finish(BodyEnd::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timeout = relay.idle_timeout;
                let idle = relay
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if idle.as_mut().poll(cx).is_ready() {
                    relay.finish(BodyEnd::Upstream(Cause::HttpResponseTimeout));
                    return Poll::Ready(Some(Err(RelayError(Cause::HttpResponseTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Full(data) => data.is_none(),
            ClientBody::Relay(relay) => relay.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ClientBody::Relay(relay) => relay.inner.size_hint(),
        }
    }
}
