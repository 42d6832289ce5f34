//! A frame-level HTTP/2 interposer that makes streams land above a GOAWAY's last-stream-id,
//! which no polite server library produces on demand: after `every` streams of a connection it
//! stops passing the client's new streams to the server and sends the client
//! `GOAWAY(last-stream-id = the last stream passed, NO_ERROR)` itself. The streams it held back
//! never reached the server (so they are safe to retry, and a duplicate POST would show); the
//! ones it passed finish normally.
//!
//! It only parses frame headers (9 bytes: length, type, flags, stream id). Dropping HEADERS
//! frames would desynchronise the server's HPACK decoder for any later HEADERS frame; there are
//! none: after the GOAWAY the client opens no stream, and the test's requests send no trailers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;

#[derive(Default)]
pub struct Counts {
    pub goaways: AtomicUsize,
    /// Streams held back (above the GOAWAY's last-stream-id).
    pub held_back: AtomicUsize,
}

pub struct GoawayProxy {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GoawayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start(server: SocketAddr, every: usize) -> GoawayProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let Ok(upstream) = TcpStream::connect(server).await else {
                continue;
            };
            tokio::spawn(relay(client, upstream, every, c.clone()));
        }
    });
    GoawayProxy { addr, counts, task }
}

async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut frame = head.to_vec();
    frame.resize(9 + len, 0);
    r.read_exact(&mut frame[9..]).await.ok()?;
    Some(frame)
}

fn stream_id(frame: &[u8]) -> u32 {
    u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff
}

async fn relay(client: TcpStream, upstream: TcpStream, every: usize, counts: Arc<Counts>) {
    let (mut client_r, client_w) = client.into_split();
    let (mut up_r, mut up_w) = upstream.into_split();
    // Whole frames only, from either direction, so the GOAWAY goes in between two.
    let client_w = Arc::new(Mutex::new(client_w));
    let to_client = client_w.clone();
    let down = tokio::spawn(async move {
        while let Some(frame) = read_frame(&mut up_r).await {
            if to_client.lock().await.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = to_client.lock().await.shutdown().await;
    });
    let mut preface = [0u8; PREFACE_LEN];
    if client_r.read_exact(&mut preface).await.is_err() || up_w.write_all(&preface).await.is_err() {
        return;
    }
    let mut opened = 0;
    let mut last_passed = 0u32;
    let mut cut_at: Option<u32> = None;
    while let Some(frame) = read_frame(&mut client_r).await {
        let id = stream_id(&frame);
        if let Some(last) = cut_at {
            if id > last {
                if frame[3] == HEADERS {
                    counts.held_back.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
        } else if frame[3] == HEADERS && id > last_passed {
            opened += 1;
            if opened > every {
                let mut goaway = vec![0, 0, 8, GOAWAY, 0, 0, 0, 0, 0];
                goaway.extend_from_slice(&last_passed.to_be_bytes());
                goaway.extend_from_slice(&0u32.to_be_bytes());
                if client_w.lock().await.write_all(&goaway).await.is_err() {
                    break;
                }
                counts.goaways.fetch_add(1, Ordering::Relaxed);
                counts.held_back.fetch_add(1, Ordering::Relaxed);
                cut_at = Some(last_passed);
                continue;
            }
            last_passed = id;
        }
        if up_w.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = up_w.shutdown().await;
    let _ = down.await;
}
