//! Graceful shutdown, the spec's drain sequence: readiness 503 at once → keep serving for
//! `drain_delay` → stop accepting → idle keep-alive connections closed, busy ones answer their
//! current request with `Connection: close` → wait for them, up to `shutdown_timeout`.
//!
//! Listeners watch a flag to stop accepting. Each connection registers a one-shot of its own, so
//! the request path polls only that (lock-free) and never a lock shared by every connection; its
//! registration also counts it, so [`Drain::close_and_wait`] knows when the last one has ended.
//!
//! An upgraded connection (a WebSocket tunnel) outlives hyper's connection future, so it
//! registers on its own ([`Tunnels::register`]): the wait counts it too, and since a tunnel has
//! no request boundary to close at, it is told to end only when `shutdown_timeout` runs out (and
//! given a moment to write its access-log line before the wait returns).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

/// The gateway's side: raises the signal and waits for every connection to end.
pub struct Drain {
    shared: Arc<Shared>,
    tokens: mpsc::Sender<()>,
    ended: mpsc::Receiver<()>,
}

struct Shared {
    /// For listeners: `true` once they must stop accepting.
    listeners: watch::Sender<bool>,
    connections: Mutex<Connections>,
    /// For tunnels: `true` once `shutdown_timeout` has run out and they must end.
    cut: watch::Sender<bool>,
    /// Tunnels registered and not yet ended.
    tunnels: watch::Sender<usize>,
}

/// How long the drain waits, after cutting tunnels, for them to end and write their access-log
/// lines (they only drop two sockets: milliseconds; bounded in case a task is stuck).
const CUT_GRACE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Connections {
    closing: bool,
    next_id: u64,
    open: HashMap<u64, oneshot::Sender<()>>,
}

/// A listener's side: tells it when to stop accepting, and registers its connections.
#[derive(Clone)]
pub struct DrainSignal {
    shared: Arc<Shared>,
    closing: watch::Receiver<bool>,
    token: mpsc::Sender<()>,
}

/// One connection's side: resolves when the connection should close once idle. Dropping it
/// tells the drain the connection has ended.
pub struct ConnectionDrain {
    id: u64,
    closing: oneshot::Receiver<()>,
    shared: Arc<Shared>,
    /// Never sent on; its drop is the message.
    token: mpsc::Sender<()>,
}

/// Registers the tunnels of one connection's requests (cloned into their request extensions).
#[derive(Clone)]
pub struct Tunnels {
    shared: Arc<Shared>,
    /// Weak: a handle kept by a request that never upgrades must not hold the drain open.
    token: mpsc::WeakSender<()>,
}

/// One open tunnel's registration: counted by the drain until dropped.
pub struct TunnelGuard {
    cut: watch::Receiver<bool>,
    shared: Arc<Shared>,
    /// Never sent on; its drop is the message.
    _token: mpsc::Sender<()>,
}

impl Default for Drain {
    fn default() -> Self {
        let (tokens, ended) = mpsc::channel(1);
        Drain {
            shared: Arc::new(Shared {
                listeners: watch::channel(false).0,
                connections: Mutex::default(),
                cut: watch::channel(false).0,
                tunnels: watch::channel(0).0,
            }),
            tokens,
            ended,
        }
    }
}

impl Drain {
    pub fn signal(&self) -> DrainSignal {
        DrainSignal {
            shared: self.shared.clone(),
            closing: self.shared.listeners.subscribe(),
            token: self.tokens.clone(),
        }
    }

    /// Tells listeners to stop accepting and connections to close once idle, then waits until
    /// every connection and tunnel has ended or `timeout` passed. Returns how many were still
    /// open; tunnels among them are told to end.
    pub async fn close_and_wait(self, timeout: Duration) -> usize {
        let Drain {
            shared,
            tokens,
            mut ended,
        } = self;
        shared.listeners.send_replace(true);
        let open = {
            let mut conns = shared.connections.lock().unwrap_or_else(|e| e.into_inner());
            conns.closing = true;
            std::mem::take(&mut conns.open)
        };
        for (_, tx) in open {
            let _ = tx.send(());
        }
        // Nothing is ever sent: `recv` returns `None` once every token (and ours) is dropped.
        drop(tokens);
        match tokio::time::timeout(timeout, ended.recv()).await {
            Ok(_) => 0,
            Err(_) => {
                let open = ended.sender_strong_count();
                shared.cut.send_replace(true);
                let mut tunnels = shared.tunnels.subscribe();
                let _ = tokio::time::timeout(CUT_GRACE, tunnels.wait_for(|n| *n == 0)).await;
                open
            }
        }
    }
}

impl DrainSignal {
    /// Resolves once the listeners must stop accepting (or the gateway is gone).
    pub async fn closing(&mut self) {
        let _ = self.closing.wait_for(|closing| *closing).await;
    }

    /// Registers a new connection (once per connection, never per request).
    pub fn connection(&self) -> ConnectionDrain {
        let (tx, rx) = oneshot::channel();
        let mut conns = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let id = conns.next_id;
        conns.next_id += 1;
        if conns.closing {
            let _ = tx.send(());
        } else {
            conns.open.insert(id, tx);
        }
        ConnectionDrain {
            id,
            closing: rx,
            shared: self.shared.clone(),
            token: self.token.clone(),
        }
    }
}

impl ConnectionDrain {
    /// Resolves once the connection should close when idle (or the gateway is gone).
    pub async fn closing(&mut self) {
        let _ = (&mut self.closing).await;
    }

    /// [`ConnectionDrain::closing`] as a poll, for a connection driven by hand. Not to be polled
    /// again once it returned `Ready`.
    pub fn poll_closing(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.closing).poll(cx).map(|_| ())
    }

    /// A handle the connection's requests register their tunnels with.
    pub fn tunnels(&self) -> Tunnels {
        Tunnels {
            shared: self.shared.clone(),
            token: self.token.downgrade(),
        }
    }
}

impl Tunnels {
    /// Registers a tunnel about to open; `None` once the drain has finished waiting (the
    /// gateway is exiting, so no tunnel should start).
    pub fn register(&self) -> Option<TunnelGuard> {
        let token = self.token.upgrade()?;
        self.shared.tunnels.send_modify(|n| *n += 1);
        Some(TunnelGuard {
            _token: token,
            cut: self.shared.cut.subscribe(),
            shared: self.shared.clone(),
        })
    }
}

impl TunnelGuard {
    /// Resolves once the tunnel must end: `shutdown_timeout` ran out (or the gateway is gone).
    pub async fn cut(&mut self) {
        let _ = self.cut.wait_for(|cut| *cut).await;
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.shared.tunnels.send_modify(|n| *n -= 1);
    }
}

impl Drop for ConnectionDrain {
    fn drop(&mut self) {
        let mut conns = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        conns.open.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_open_connections_and_counts_those_cut() {
        let drain = Drain::default();
        let mut listener = drain.signal();
        let mut idle = listener.connection();
        let busy = listener.connection();
        let closing = tokio::spawn(async move {
            idle.closing().await;
            drop(idle);
        });
        let waited = tokio::spawn(drain.close_and_wait(Duration::from_secs(30)));
        // Bounded (virtual time): a drain that never told them would fail here, not hang.
        let told = Duration::from_secs(60);
        tokio::time::timeout(told, listener.closing())
            .await
            .expect("listener told");
        tokio::time::timeout(told, closing)
            .await
            .expect("idle connection told")
            .unwrap();
        // A connection accepted after the drain began is told to close at once.
        let mut late = listener.connection();
        tokio::time::timeout(told, late.closing())
            .await
            .expect("late connection told");
        drop((late, listener));
        // `busy` is still open: the wait ends at the timeout and reports it.
        assert_eq!(waited.await.unwrap(), 1);
        drop(busy);
    }

    #[tokio::test(start_paused = true)]
    async fn tunnels_are_waited_for_and_cut_only_at_the_timeout() {
        let drain = Drain::default();
        let listener = drain.signal();
        let conn = listener.connection();
        let tunnels = conn.tunnels();
        let mut tunnel = tunnels.register().expect("drain still waiting");
        // The upgraded connection's hyper future ends; its tunnel lives on.
        drop((conn, listener));
        let start = tokio::time::Instant::now();
        let waited = tokio::spawn(drain.close_and_wait(Duration::from_secs(30)));
        let cut_at = tokio::spawn(async move {
            tunnel.cut().await;
            let at = tokio::time::Instant::now();
            // The tunnel takes a moment to end (and log): the drain waits for it.
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(tunnel);
            at
        });
        assert_eq!(waited.await.unwrap(), 1, "the tunnel was still open");
        assert!(
            cut_at.is_finished(),
            "the drain returned after the cut tunnel ended"
        );
        let cut_at = cut_at.await.unwrap();
        assert_eq!(
            cut_at - start,
            Duration::from_secs(30),
            "cut at the timeout, not before"
        );
        // The drain is done: a tunnel can no longer start.
        assert!(tunnels.register().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_handle_alone_does_not_hold_the_drain() {
        let drain = Drain::default();
        let listener = drain.signal();
        let tunnels = listener.connection().tunnels();
        drop(listener);
        assert_eq!(drain.close_and_wait(Duration::from_secs(30)).await, 0);
        drop(tunnels);
    }

    #[tokio::test(start_paused = true)]
    async fn returns_as_soon_as_the_last_connection_ends() {
        let drain = Drain::default();
        let listener = drain.signal();
        let mut conn = listener.connection();
        drop(listener);
        let waited = tokio::spawn(drain.close_and_wait(Duration::from_secs(30)));
        tokio::time::timeout(Duration::from_secs(60), conn.closing())
            .await
            .expect("connection told");
        drop(conn);
        assert_eq!(waited.await.unwrap(), 0);
    }
}
