//! Graceful shutdown, the spec's drain sequence: readiness 503 at once → keep serving for
//! `drain_delay` → stop accepting → idle keep-alive connections closed, busy ones answer their
//! current request with `Connection: close` → wait for them, up to `shutdown_timeout`.
//!
//! Listeners and connections hold a [`DrainSignal`]: a flag they watch to know the listeners
//! are closing, and a token whose drop tells [`Drain::close_and_wait`] the connection has ended.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// The gateway's side: raises the signal and waits for every connection to end.
pub struct Drain {
    closing: watch::Sender<bool>,
    tokens: mpsc::Sender<()>,
    ended: mpsc::Receiver<()>,
}

/// A listener's or connection's side: clone one per connection.
#[derive(Clone)]
pub struct DrainSignal {
    closing: watch::Receiver<bool>,
    /// Never sent on; its drop is the message.
    _token: mpsc::Sender<()>,
}

impl Default for Drain {
    fn default() -> Self {
        let (tokens, ended) = mpsc::channel(1);
        Drain {
            closing: watch::channel(false).0,
            tokens,
            ended,
        }
    }
}

impl Drain {
    pub fn signal(&self) -> DrainSignal {
        DrainSignal {
            closing: self.closing.subscribe(),
            _token: self.tokens.clone(),
        }
    }

    /// Tells listeners to stop accepting and connections to close once idle, then waits until
    /// every connection has ended or `timeout` passed. Returns how many were still open.
    pub async fn close_and_wait(self, timeout: Duration) -> usize {
        let Drain {
            closing,
            tokens,
            mut ended,
        } = self;
        closing.send_replace(true);
        // Nothing is ever sent: `recv` returns `None` once the last signal (and ours) is dropped.
        drop(tokens);
        match tokio::time::timeout(timeout, ended.recv()).await {
            Ok(_) => 0,
            Err(_) => ended.sender_strong_count(),
        }
    }
}

impl DrainSignal {
    /// Resolves once the listeners are closing (or the gateway is gone).
    pub async fn closing(&mut self) {
        let _ = self.closing.wait_for(|closing| *closing).await;
    }
}
