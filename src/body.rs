//! The request body sent upstream: nothing, a buffered body that can be replayed on another
//! target, or the client's body streamed through (after any part already read), which cannot be
//! replayed once sent.

use std::collections::VecDeque;
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
    Stream(Streamed),
}

/// The client's body: the chunks already read, then the rest as it arrives.
#[derive(Debug)]
pub struct Streamed {
    prefix: VecDeque<Bytes>,
    rest: Incoming,
}

impl Streamed {
    pub fn new(prefix: Vec<Bytes>, rest: Incoming) -> Self {
        Self {
            prefix: prefix.into(),
            rest,
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
            UpstreamBody::Stream(s) => match s.prefix.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Pin::new(&mut s.rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Full(data) => data.is_none(),
            UpstreamBody::Stream(s) => s.prefix.is_empty() && s.rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            UpstreamBody::Stream(s) => {
                let read: u64 = s.prefix.iter().map(|b| b.len() as u64).sum();
                let rest = s.rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + read);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + read);
                }
                hint
            }
        }
    }
}
