//! The HTTP/2 limits a listener sets (`h2_*`, and `max_header_bytes` as the header list size),
//! seen from real clients: a raw client reads the SETTINGS and floods resets, hyper's h2 client
//! sends big headers; and the preface detection on a plain listener, with split first bytes.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, config, upstream};

/// An HTTP/2 frame: 9-byte header (length, type, flags, stream id) and its payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Reads frames until `want` says it has what it needs (`None`: the connection ended first).
async fn read_frames<T>(
    stream: &mut TcpStream,
    mut want: impl FnMut(u8, u8, u32, &[u8]) -> Option<T>,
) -> Option<T> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let id = u32::from_be_bytes(buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
            if let Some(found) = want(buf[3], buf[4], id, &buf[9..9 + len]) {
                return Some(found);
            }
            buf.drain(..9 + len);
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn the_configured_limits_are_what_the_server_announces() {
    let up = upstream::ok("ok").await;
    let mut cfg = config(&[up.addr]);
    cfg.listeners[0].max_header_bytes = 100_000;
    let h2 = &mut cfg.listeners[0].h2;
    h2.max_concurrent_streams = 7;
    h2.initial_stream_window = 300_000;
    h2.initial_connection_window = 5_000_000;
    let gw = support::start(cfg).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.unwrap();
    let (mut settings, mut connection_window) = (Vec::new(), None);
    let read = read_frames(&mut stream, |kind, flags, id, payload| {
        match (kind, flags & 0x1, id) {
            (SETTINGS, 0, 0) => {
                for s in payload.chunks(6) {
                    let id = u16::from_be_bytes([s[0], s[1]]);
                    settings.push((id, u32::from_be_bytes(s[2..6].try_into().unwrap())));
                }
            }
            (WINDOW_UPDATE, _, 0) => {
                connection_window = Some(u32::from_be_bytes(payload.try_into().unwrap()));
            }
            _ => {}
        }
        (!settings.is_empty() && connection_window.is_some()).then_some(())
    });
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("SETTINGS and WINDOW_UPDATE in time")
        .expect("the connection stays open");
    let setting = |id: u16| settings.iter().find(|s| s.0 == id).map(|s| s.1);
    assert_eq!(
        setting(0x3),
        Some(7),
        "MAX_CONCURRENT_STREAMS in {settings:?}"
    );
    assert_eq!(
        setting(0x4),
        Some(300_000),
        "INITIAL_WINDOW_SIZE in {settings:?}"
    );
    assert_eq!(
        setting(0x6),
        Some(100_000),
        "MAX_HEADER_LIST_SIZE in {settings:?}"
    );
    // The connection window starts at 65 535 and is raised to the configured size.
    assert_eq!(connection_window, Some(5_000_000 - 65_535));
}

#[tokio::test]
async fn a_rapid_reset_flood_is_answered_with_goaway() {
    let up = upstream::hang().await;
    let mut cfg = config(&[up.addr]);
    // Below hyper's default of 20: the flood below is only refused if this setting is used.
    cfg.listeners[0].h2.max_pending_accept_reset_streams = 5;
    let gw = support::start(cfg).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // CVE-2023-44487: open a stream and reset it at once, many times, in one write, so the
    // streams are reset before the server got to accept them.
    let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    flood.extend(frame(SETTINGS, 0, 0, &[]));
    // HPACK: :method GET, :scheme http, :path /, :authority a.test (literal, indexed name).
    let block = [&[0x82, 0x86, 0x84, 0x41, 6][..], b"a.test"].concat();
    for i in 0..12u32 {
        let id = 2 * i + 1;
        // END_STREAM | END_HEADERS
        flood.extend(frame(HEADERS, 0x5, id, &block));
        flood.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    stream.write_all(&flood).await.unwrap();
    let goaway = read_frames(&mut stream, |kind, _, _, payload| {
        (kind == GOAWAY).then(|| u32::from_be_bytes(payload[4..8].try_into().unwrap()))
    });
    let code = tokio::time::timeout(Duration::from_secs(10), goaway)
        .await
        .expect("the server answers");
    assert_eq!(code, Some(ENHANCE_YOUR_CALM));
}

#[tokio::test]
async fn big_cookies_fit_and_a_header_list_over_max_header_bytes_does_not_pass() {
    let up = upstream::serve(|req| {
        let cookie = req.headers().get("cookie").map_or(0, |c| c.len());
        let resp = http::Response::builder().header("x-cookie-len", cookie.to_string());
        resp.body(Full::default()).unwrap()
    })
    .await;
    let mut cfg = config(&[up.addr]);
    cfg.listeners[0].max_header_bytes = 48 * 1024;
    let gw = support::start(cfg).await;
    let io = TokioIo::new(TcpStream::connect(gw.addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    // A 40 KiB cookie (a fat session or JWT) fits.
    let cookie = "a".repeat(40 * 1024);
    let req = http::Request::get(gw.url("/"))
        .header("cookie", format!("s={cookie}"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-cookie-len"],
        (40 * 1024 + 2).to_string().as_str()
    );
    resp.into_body().collect().await.unwrap();
    assert_eq!(up.stats.requests(), 1);
    // 60 KiB does not: 431 from the server, or the client refuses to send it past the limit
    // the server announced. Either way nothing reaches the upstream.
    let req = http::Request::get(gw.url("/"))
        .header("x-big", "b".repeat(60 * 1024))
        .body(Full::<Bytes>::default())
        .unwrap();
    if let Ok(resp) = sender.send_request(req).await {
        assert_eq!(resp.status(), 431);
    }
    assert_eq!(up.stats.requests(), 1);
}

#[tokio::test]
async fn a_preface_or_a_request_line_split_across_writes_is_told_apart() {
    let up = upstream::ok("ok").await;
    let gw = support::start(config(&[up.addr])).await;
    // The pause makes a separate segment likely, so gatewise peeks a partial prefix first
    // (a pause to split the bytes, not to wait for readiness).
    let pause = Duration::from_millis(30);

    // h2c: the preface in two writes, then the server's SETTINGS come back.
    let mut h2 = TcpStream::connect(gw.addr).await.unwrap();
    h2.set_nodelay(true).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(pause).await;
    let mut rest = b"\r\nSM\r\n\r\n".to_vec();
    rest.extend(frame(SETTINGS, 0, 0, &[]));
    h2.write_all(&rest).await.unwrap();
    let settings = read_frames(&mut h2, |kind, flags, _, _| {
        (kind == SETTINGS && flags & 0x1 == 0).then_some(())
    });
    tokio::time::timeout(Duration::from_secs(10), settings)
        .await
        .expect("SETTINGS in time")
        .expect("served as HTTP/2");

    // HTTP/1.1 starting like the preface (`P`, then `PU`): still HTTP/1.1.
    let mut h1 = TcpStream::connect(gw.addr).await.unwrap();
    h1.set_nodelay(true).unwrap();
    h1.write_all(b"P").await.unwrap();
    tokio::time::sleep(pause).await;
    h1.write_all(b"UT /x HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let read = h1.read_to_string(&mut answer);
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("answer in time")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed() {
    const PING: u8 = 0x6;
    let up = upstream::ok("ok").await;
    let mut cfg = config(&[up.addr]);
    cfg.listeners[0].h2.keepalive_interval = Duration::from_millis(100);
    cfg.listeners[0].h2.keepalive_timeout = Duration::from_millis(200);
    let gw = support::start(cfg).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.unwrap();
    // A PING comes (the client is silent), is never answered, and the connection ends.
    let mut pinged = false;
    let ended = read_frames(&mut stream, |kind, flags, _, _| {
        pinged |= kind == PING && flags & 0x1 == 0;
        None::<()>
    });
    let ended = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the silent connection is closed");
    assert!(ended.is_none());
    assert!(pinged, "a PING was sent before closing");
}
