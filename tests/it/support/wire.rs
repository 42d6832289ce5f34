//! Raw HTTP/1.1 on both sides of the gateway: a client that writes bytes and reads to EOF, an
//! upstream that answers canned bytes or captures what it was sent, and a decoder that frames
//! a message by its own headers — so a test sees exactly what gatewise put on the wire.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::upstream::{self, Mock};

/// One message as framed on the wire.
#[derive(Debug)]
pub struct Msg {
    /// The start line and headers, lowercased.
    pub head: String,
    pub body: Vec<u8>,
    /// The body ended as its framing said; false when the connection ended first.
    pub complete: bool,
    /// Bytes after the message.
    pub rest: Vec<u8>,
}

impl Msg {
    pub fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}:");
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::trim))
    }

    pub fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }
}

fn find(buf: &[u8], pat: &[u8]) -> Option<usize> {
    buf.windows(pat.len()).position(|w| w == pat)
}

/// Decodes the first message in `buf` by its own framing. `None`: more bytes are needed.
/// `head_request`: a response to HEAD (no body whatever it says). `eof`: nothing more will come.
pub fn decode(buf: &[u8], is_request: bool, head_request: bool, eof: bool) -> Option<Msg> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let mut msg = Msg {
        head: String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase(),
        body: Vec::new(),
        complete: true,
        rest: Vec::new(),
    };
    let body = &buf[end..];
    let no_body = !is_request && (head_request || matches!(msg.status(), 100..=199 | 204 | 304));
    let cut = |mut msg: Msg, body: &[u8]| {
        msg.body = body.to_vec();
        msg.complete = false;
        eof.then_some(msg)
    };
    if no_body {
        msg.rest = body.to_vec();
        return Some(msg);
    }
    if msg.header("transfer-encoding") == Some("chunked") {
        let mut i = 0;
        loop {
            let Some(line) = find(&body[i..], b"\r\n") else {
                return cut(msg, &[]);
            };
            let size = std::str::from_utf8(&body[i..i + line]).ok()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            i += line + 2;
            if body.len() < i + size + 2 {
                return cut(msg, &[]);
            }
            if size == 0 {
                msg.rest = body[i + 2..].to_vec();
                return Some(msg);
            }
            msg.body.extend_from_slice(&body[i..i + size]);
            i += size + 2;
        }
    }
    if let Some(len) = msg.header("content-length") {
        let len: usize = len.parse().ok()?;
        if body.len() < len {
            return cut(msg, body);
        }
        msg.body = body[..len].to_vec();
        msg.rest = body[len..].to_vec();
        return Some(msg);
    }
    if is_request {
        return Some(msg);
    }
    // Close-delimited.
    msg.body = body.to_vec();
    eof.then_some(msg)
}

/// Writes `request` to `addr` and reads until the peer closes (send `Connection: close`).
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_to_end(&mut s).await
}

pub async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "peer never closed; got {:?}",
        String::from_utf8_lossy(&out)
    );
    out
}

/// The response to a raw `request`, decoded.
pub async fn response(addr: SocketAddr, request: &[u8]) -> Msg {
    let raw = exchange(addr, request).await;
    let head_request = request.starts_with(b"HEAD ");
    decode(&raw, false, head_request, true)
        .unwrap_or_else(|| panic!("no response in {:?}", String::from_utf8_lossy(&raw)))
}

/// An upstream that reads each request head and answers `response` as it is, then keeps the
/// connection until the gateway closes it (or closes it itself when `response` says
/// `Connection: close`).
pub async fn canned(response: &'static [u8]) -> Mock {
    upstream::raw(move |mut stream, _| async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut filled = 0;
        while find(&buf[..filled], b"\r\n\r\n").is_none() {
            match stream.read(&mut buf[filled..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => filled += n,
            }
        }
        if stream.write_all(response).await.is_err()
            || find(response, b"Connection: close").is_some()
        {
            return;
        }
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await
}

/// What a capturing upstream saw.
#[derive(Debug)]
pub enum Seen {
    /// A request head arrived (its body may still be coming).
    Head(String),
    /// A whole request, framed by its own headers.
    Request(Msg),
}

/// An upstream that reports each request (head first, then the whole message) and answers
/// `200 ok` with `Connection: close`.
pub async fn capture() -> (Mock, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mock = upstream::raw(move |mut stream, _| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            let mut head_told = false;
            loop {
                let n = match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                if !head_told {
                    if let Some(end) = find(&buf, b"\r\n\r\n") {
                        head_told = true;
                        let head = String::from_utf8_lossy(&buf[..end + 4]).to_ascii_lowercase();
                        let _ = tx.send(Seen::Head(head));
                    }
                }
                if let Some(msg) = decode(&buf, true, false, false) {
                    let _ = tx.send(Seen::Request(msg));
                    break;
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
        }
    })
    .await;
    (mock, rx)
}

/// The next whole request a [`capture`] upstream saw (skipping head reports).
pub async fn next_request(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Msg {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Seen::Request(msg))) => return msg,
            Ok(Some(Seen::Head(_))) => continue,
            other => panic!("no whole request upstream: {other:?}"),
        }
    }
}
