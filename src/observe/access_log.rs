//! One JSON line per request, written off the request path.
//!
//! The request task serializes its record into a buffer and hands it to a writer thread over a
//! bounded channel; the thread writes through a `BufWriter` and flushes whenever the channel runs
//! dry, so a burst costs one write syscall, and a slow disk or a blocked stdout never stalls a
//! request. When the channel is full (the destination has been stuck for a while) lines are
//! dropped and counted rather than held in memory without bound. A log file can be reopened on
//! demand (SIGUSR1 in `gatewise run`) for external rotation.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::cause::{millis, Cause};
use crate::config::AccessLog as Destination;

/// One upstream attempt of a request.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub target: std::sync::Arc<str>,
    /// `None` when the attempt produced a response (`status` then says which).
    pub cause: Option<Cause>,
    pub status: Option<u16>,
    pub request_sent: bool,
    pub reused: bool,
    #[serde(serialize_with = "as_millis")]
    pub duration_ms: Duration,
    /// Started as a hedge: the attempt before it had not answered after `hedge_after`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hedge: bool,
    /// Cancelled because the other attempt of a hedged pair answered first.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
}

/// The access-log line of one request.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    #[serde(serialize_with = "as_rfc3339")]
    pub time: SystemTime,
    pub request_id: &'a str,
    pub client: std::net::SocketAddr,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub target: Option<&'a str>,
    pub status: u16,
    /// `http` or `https`: how the client reached the listener.
    pub scheme: &'static str,
    /// `h1` or `h2`: the protocol the client spoke (HTTP/1.x, or HTTP/2 by ALPN or h2c).
    pub protocol: &'static str,
    /// `h1` or `h2`: what gatewise spoke to the target that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_protocol: Option<&'static str>,
    /// A gRPC request's `grpc-status` (the upstream's, or the one gatewise answered with).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    #[serde(serialize_with = "as_millis")]
    pub duration_ms: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cause: Option<Cause>,
    /// Why the request stopped retrying, when it failed after an attempt (e.g. `budget_exhausted`).
    pub retry_stop: Option<&'static str>,
    /// Time the request waited in the outage hold for a target to come back (0 when not held).
    #[serde(serialize_with = "as_millis")]
    pub held_ms: Duration,
    /// The response body did not reach the client in full (client gone or upstream cut it).
    pub incomplete: bool,
    pub attempts: &'a [Attempt],
    /// Only on the line of an upgraded request (status 101), written when its tunnel closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,
}

impl Record<'static> {
    /// The line of a request answered before routing (a malformed head, a 408, a redirect to
    /// https): no route, upstream or attempt; the caller fills in what it knows besides.
    pub fn unrouted(
        client: std::net::SocketAddr,
        scheme: &'static str,
        protocol: &'static str,
        status: u16,
        cause: Option<Cause>,
    ) -> Self {
        Record {
            time: SystemTime::now(),
            request_id: "",
            client,
            method: "-",
            host: "",
            path: "",
            route: None,
            upstream: None,
            target: None,
            status,
            scheme,
            protocol,
            upstream_protocol: None,
            grpc_status: None,
            duration_ms: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            cause,
            retry_stop: None,
            held_ms: Duration::ZERO,
            incomplete: false,
            attempts: &[],
            tunnel: None,
        }
    }
}

/// How a tunnel (an upgraded connection) ended; its bytes each way are the line's `bytes_in`
/// (client to upstream) and `bytes_out` (upstream to client), its lifetime the line's duration.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Tunnel {
    /// `client`, `upstream`, `idle_timeout` or `shutdown`.
    pub closed_by: &'static str,
}

impl Serialize for Cause {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(millis(*d))
}

fn as_rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// Lines that may wait for the writer (the channel's slots take 1 MiB up front; queued lines
/// ~12 MiB at a typical 384 bytes). At 100k requests/s that is a third of a second of lines, at
/// 10k over three seconds; beyond it the destination is stuck, not slow.
pub const QUEUE_LINES: usize = 32_768;

/// Where access-log lines go. Cloning shares the writer.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
    /// Lines dropped because the queue was full or the destination refused them
    /// (`gatewise_access_log_dropped_total`).
    dropped: Counter,
    /// Set by [`AccessLog::reopen`]; the writer reopens its file before the next batch.
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    fn new(tx: Option<mpsc::SyncSender<Vec<u8>>>) -> Self {
        Self {
            tx,
            dropped: Counter::default(),
            reopen: Arc::default(),
        }
    }

    /// Starts the writer thread for `dest`. Once every clone of the log is dropped, call
    /// [`Writer::finish`] so the last lines reach the destination before the process exits.
    pub fn start(dest: &Destination) -> std::io::Result<(Self, Option<Writer>)> {
        let (out, path): (Box<dyn Write + Send>, _) = match dest {
            Destination::Off => return Ok((Self::new(None), None)),
            Destination::Stdout => (Box::new(std::io::stdout()), None),
            Destination::File(path) => (Box::new(open(path)?), Some(path.clone())),
        };
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE_LINES);
        let log = Self::new(Some(tx));
        let reopen = log.reopen.clone();
        let dropped = log.dropped.clone();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("gatewise-access-log".into())
            .spawn(move || {
                write_loop(rx, out, path, &reopen, &dropped);
                let _ = done_tx.send(());
            })?;
        Ok((log, Some(Writer { thread, done })))
    }

    /// A log whose lines arrive on the returned channel, which holds up to `capacity` of them
    /// (for tests and the demo).
    pub fn capture_bounded(capacity: usize) -> (Self, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        (Self::new(Some(tx)), rx)
    }

    /// [`AccessLog::capture_bounded`] with the production queue size.
    pub fn capture() -> (Self, mpsc::Receiver<Vec<u8>>) {
        Self::capture_bounded(QUEUE_LINES)
    }

    /// Asks the writer to reopen its file (after a rotation moved it away), at once even when no
    /// request comes. Nothing to do for stdout.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::SeqCst);
        // An empty line wakes the writer; it writes nothing.
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Vec::new());
        }
    }

    /// Lines dropped so far because the destination could not keep up.
    pub fn dropped(&self) -> &Counter {
        &self.dropped
    }

    /// Whether lines go anywhere (so callers can skip preparing them).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn write(&self, record: &Record<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut line = Vec::with_capacity(384);
        // The `Serialize` derive's JSON, written without serde (`access_line.rs`).
        super::access_line::write(&mut line, record);
        line.push(b'\n');
        // Full: the destination is stuck; drop and count rather than grow without bound.
        // Disconnected cannot happen: the writer thread only ends with the process.
        if tx.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}

/// The writer thread of a started access log.
pub struct Writer {
    thread: std::thread::JoinHandle<()>,
    done: mpsc::Receiver<()>,
}

impl Writer {
    /// Once all log handles are dropped, waits until every queued line is written, but not
    /// longer than `limit`: a destination that stopped accepting writes must not keep the
    /// process from exiting. Returns whether everything was written.
    pub fn finish(self, limit: Duration) -> bool {
        match self.done.recv_timeout(limit) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                eprintln!("gatewise: access log: destination stuck; the last lines are lost");
                false
            }
            _ => self.thread.join().is_ok(),
        }
    }
}

fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

fn write_loop(
    rx: mpsc::Receiver<Vec<u8>>,
    out: Box<dyn Write + Send>,
    path: Option<PathBuf>,
    reopen: &AtomicBool,
    dropped: &Counter,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut told = false;
    while let Ok(line) = rx.recv() {
        if reopen.swap(false, Ordering::SeqCst) {
            if let Some(path) = &path {
                let _ = out.flush();
                match open(path) {
                    Ok(file) => out = std::io::BufWriter::with_capacity(64 * 1024, Box::new(file)),
                    // Keep writing to the old file rather than lose lines.
                    Err(err) => eprintln!(
                        "gatewise: access log: cannot reopen {}: {err}",
                        path.display()
                    ),
                }
            }
        }
        // Every line of a batch that failed is counted lost (an empty line is only a wake-up).
        let mut lines = u64::from(!line.is_empty());
        let mut result = out.write_all(&line);
        while let Ok(line) = rx.try_recv() {
            lines += u64::from(!line.is_empty());
            result = result.and_then(|()| out.write_all(&line));
        }
        let result = result.and_then(|()| out.flush());
        if result.is_ok() {
            told = false;
        } else if let Err(err) = result {
            dropped.inc_by(lines);
            // What the failed batch left in the buffer is dropped too: it would otherwise be
            // retried ahead of every later line.
            out = std::io::BufWriter::with_capacity(64 * 1024, out.into_parts().0);
            // Said once per run of failures, not per batch: a closed pipe fails every write.
            if !std::mem::replace(&mut told, true) {
                eprintln!(
                    "gatewise: access log: write failed ({err}); lost lines are counted in gatewise_access_log_dropped_total"
                );
            }
        }
        // Let lines gather before the next drain: a sender wakes this thread only while it is
        // blocked in `recv`, so under load this costs one wake-up per batch instead of one per
        // request (measured: ~29% less CPU per request with the log on). Lines reach the
        // destination at most this late.
        std::thread::sleep(BATCH_INTERVAL);
    }
}

/// How long the writer lets lines gather between two drains.
const BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record<'static> {
        Record {
            time: SystemTime::UNIX_EPOCH,
            request_id: "r",
            client: "127.0.0.1:1".parse().unwrap(),
            method: "GET",
            host: "h",
            path: "/",
            route: None,
            upstream: None,
            target: None,
            status: 200,
            scheme: "http",
            protocol: "h1",
            upstream_protocol: None,
            grpc_status: None,
            duration_ms: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            cause: None,
            retry_stop: None,
            held_ms: Duration::ZERO,
            incomplete: false,
            attempts: &[],
            tunnel: None,
        }
    }

    #[test]
    fn a_stuck_destination_drops_and_counts_lines_instead_of_growing() {
        let (log, rx) = AccessLog::capture_bounded(2);
        for _ in 0..5 {
            log.write(&record());
        }
        assert_eq!(log.dropped().get(), 3);
        assert_eq!(rx.try_iter().count(), 2, "the queue held what it could");
        log.write(&record());
        assert_eq!(log.dropped().get(), 3, "room again: nothing more dropped");
    }

    /// Waits (bounded) until `path` holds `n` lines, and returns them.
    fn lines_of(path: &std::path::Path, n: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.len() >= n || std::time::Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn reopen_after_rotation_writes_to_a_new_file() {
        let dir = std::env::temp_dir().join(format!("gatewise-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let rotated = dir.join("access.log.1");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&rotated);
        let (log, writer) = AccessLog::start(&Destination::File(path.clone())).unwrap();
        log.write(&record());
        assert_eq!(lines_of(&path, 1).len(), 1);
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        // The reopen happens without waiting for a request.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(path.exists(), "reopened (created) before the next line");
        log.write(&record());
        log.write(&record());
        drop(log);
        assert!(writer.unwrap().finish(Duration::from_secs(10)));
        assert_eq!(
            lines_of(&rotated, 1).len(),
            1,
            "the rotated file keeps its line"
        );
        assert_eq!(lines_of(&path, 2).len(), 2, "new lines go to a new file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
