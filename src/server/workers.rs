//! `worker_model = "per_worker"`: N worker threads, each with its own current-thread tokio
//! runtime (nginx's model: a connection's work stays on the thread that accepted it, with no
//! work-stealing queues, no cross-thread wake-ups and no atomics of a shared scheduler).
//!
//! Every worker accepts on the same listening socket (a duplicate of the descriptor, registered
//! with the worker's own reactor), so reload and binary upgrade still deal with one socket per
//! listener. The control runtime (the main thread: signals, reload, admin, health checks,
//! certificate watches) spawns nothing on the workers but their accept loops; the access-log
//! writer is a thread of its own. Each connection a worker accepts is served on that worker,
//! upstream connections it opens included.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The index of the worker this thread is (`None`: not a worker thread).
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker running the calling code, if it runs on one: upstream connections opened on a
/// worker are reused by that worker's requests only (`upstream/pool.rs`), as nginx's per-worker
/// keep-alive pools are, so a request never waits for another worker's thread to drive its
/// connection.
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Running worker threads.
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Workers {
    /// Starts `n` worker threads (at least one), each running its own runtime until
    /// [`Workers::stop`].
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut workers = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("gatewise-worker-{i}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(Some(i)));
                    // A current-thread runtime runs its tasks only inside `block_on`.
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Connections still open now are dropped (the drain has waited for them).
                    runtime.shutdown_timeout(Duration::from_millis(500));
                })?;
            workers.push(Worker {
                handle,
                stop,
                thread,
            });
        }
        Ok(Workers { workers })
    }

    /// One handle per worker, to spawn its accept loops on.
    pub fn handles(&self) -> Vec<Handle> {
        self.workers.iter().map(|w| w.handle.clone()).collect()
    }

    /// Stops every worker: their tasks are dropped. Waits for the threads up to `limit`.
    pub fn stop(self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        let threads: Vec<_> = self
            .workers
            .into_iter()
            .map(|w| {
                let _ = w.stop.send(());
                w.thread
            })
            .collect();
        for thread in threads {
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// Runs `serve` on every worker with its own duplicate of `socket` (or, without workers, on the
/// current runtime with `socket` itself). Returns the tasks; aborting them stops accepting.
pub fn spawn_accept_loops<F, Fut>(
    workers: &[Handle],
    socket: tokio::net::TcpListener,
    serve: F,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>>
where
    F: Fn(tokio::net::TcpListener) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    if workers.is_empty() {
        return Ok(vec![tokio::spawn(serve(socket))]);
    }
    // Deregistered from this runtime's reactor; each worker registers its duplicate with its own.
    let socket = socket.into_std()?;
    let mut tasks = Vec::with_capacity(workers.len());
    for handle in workers {
        let dup = socket.try_clone()?;
        let listener = {
            let _entered = handle.enter();
            tokio::net::TcpListener::from_std(dup)?
        };
        tasks.push(handle.spawn(serve(listener)));
    }
    Ok(tasks)
}
