//! Discovery: where an upstream's targets come from. A [`Source`] yields the full set of targets
//! of one upstream, each `ready` or `draining`, whenever it changes; a source that fails says so
//! with [`Report::Failed`] and the last good set is kept.
//!
//! (Placeholder with the seam's agreed API until the `disc` branch is merged.)

use std::future::Future;
use std::pin::Pin;

pub mod kubernetes;

/// Whether a discovered target takes new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Draining,
}

/// One target as a source found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub addr: String,
    pub readiness: Readiness,
}

/// What a source tells its upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Targets(Vec<Discovered>),
    Failed(String),
}

/// A source of targets for one upstream.
pub trait Source: Send + 'static {
    fn run(
        self: Box<Self>,
        tx: tokio::sync::mpsc::Sender<Report>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}
