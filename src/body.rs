//! The request body sent upstream: nothing, a buffered body that can be replayed on another
//! target, or the client's body streamed through (not replayable once sent).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// A request body on its way to an upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    Empty,
    /// A buffered body; `None` once sent.
    Full(Option<Bytes>),
    Stream(Incoming),
}

impl UpstreamBody {
    /// A copy for another attempt, if this body can be replayed.
    pub fn replay(&self, buffered: &Option<Bytes>) -> Option<UpstreamBody> {
        match self {
            UpstreamBody::Stream(_) => None,
            _ => Some(match buffered {
                Some(b) if !b.is_empty() => UpstreamBody::Full(Some(b.clone())),
                _ => UpstreamBody::Empty,
            }),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            UpstreamBody::Stream(inner) => Pin::new(inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Full(data) => data.is_none(),
            UpstreamBody::Stream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            UpstreamBody::Stream(inner) => inner.size_hint(),
        }
    }
}
