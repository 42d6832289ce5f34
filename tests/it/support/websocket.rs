//! WebSocket fixtures: a real WebSocket server (tokio-tungstenite) as the upstream, a real
//! client, and raw handshakes for the requests a library would not send.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::upstream;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket server on 127.0.0.1:0. Text and binary messages are echoed; path
/// `/upstream-closes` sends a close frame (4002) right after the handshake. Every close frame it
/// receives is reported on the returned channel.
// The handshake callback's error type is tungstenite's (a whole HTTP response).
#[allow(clippy::result_large_err)]
pub async fn ws_upstream() -> (upstream::Mock, mpsc::UnboundedReceiver<Option<CloseFrame>>) {
    let (closes, received) = mpsc::unbounded_channel();
    let mock = upstream::raw(move |stream, _| {
        let closes = closes.clone();
        async move {
            let mut path = String::new();
            let callback = |req: &http::Request<()>, resp| {
                path = req.uri().path().to_string();
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                return;
            };
            if path == "/upstream-closes" {
                let frame = CloseFrame {
                    code: CloseCode::from(4002),
                    reason: "server going away".into(),
                };
                let _ = ws.close(Some(frame)).await;
            }
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Close(frame) = &msg {
                    let _ = closes.send(frame.clone());
                }
                // Pings are answered by tungstenite itself.
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (mock, received)
}

pub async fn connect(addr: SocketAddr, path: &str) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .expect("WebSocket handshake through gatewise");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["via"], "1.1 gatewise");
    ws
}

/// The next data or close message (tungstenite answers pings; pongs are returned too).
pub async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("a message in time")
        .expect("stream open")
        .expect("a message")
}

/// Reads on until the stream ends (the tunnel closed); returns what ended it.
pub async fn until_end(ws: &mut Ws) -> Option<Result<Message, WsError>> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return Some(Ok(Message::Close(frame))),
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the tunnel ends")
}

/// After the close handshake: the client's reply goes out and the server closes the connection.
pub async fn assert_ends(ws: &mut Ws) {
    let after = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("the connection closes");
    assert!(!matches!(after, Some(Ok(_))), "{after:?}");
}

/// A raw WebSocket handshake request (the key is RFC 6455's example).
pub fn handshake(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// Sends `request` on a new connection and reads the response head and whatever follows until
/// `until` is seen or the connection closes.
pub async fn raw(addr: SocketAddr, request: &str, until: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        while !String::from_utf8_lossy(&out).contains(until) {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("an answer");
    String::from_utf8_lossy(&out).to_string()
}
