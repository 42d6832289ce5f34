//! Framing on both sides, raw bytes in and out: every combination of Content-Length,
//! Transfer-Encoding, Connection: close, HEAD, 204, 304 and 1xx gatewise can be handed, and what
//! it writes for each (issue #11).

use tokio::io::AsyncWriteExt;

use crate::support::upstream;
use crate::support::wire::{self, Seen};
use crate::support::{self, route_of};

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
const HEAD: &[u8] = b"HEAD /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn upstream_length_next_to_chunked_no_longer_truncates_the_response() {
    // Before: the upstream's Content-Length: 5 was kept on the decoded chunked body, and the
    // client got "01234" as a complete response.
    let up = wire::canned(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
    )
    .await;
    let gw = support::start(support::config(&[up.addr])).await;
    let msg = wire::response(gw.addr, GET).await;
    assert_eq!(msg.status(), 200, "{msg:?}");
    assert_eq!(msg.body, b"0123456789", "{msg:?}");
    assert!(msg.complete && msg.rest.is_empty(), "{msg:?}");
    assert_ne!(msg.header("content-length"), Some("5"), "{msg:?}");
    assert_eq!(gw.next_log()["bytes_out"], 10);
}

/// (what the client sends, what the upstream answers, body the client must get, framing header
/// the client must see — `None`: neither Content-Length nor Transfer-Encoding).
type Case = (
    &'static [u8],
    &'static [u8],
    &'static [u8],
    Option<(&'static str, &'static str)>,
);

#[tokio::test]
async fn every_response_framing_reaches_the_client_as_one_consistent_frame() {
    let cases: &[Case] = &[
        (
            GET,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"abc",
            Some(("transfer-encoding", "chunked")),
        ),
        (
            GET,
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"abc",
            Some(("content-length", "3")),
        ),
        // Close-delimited upstream body: chunked to an HTTP/1.1 client.
        (
            GET,
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc",
            b"abc",
            Some(("transfer-encoding", "chunked")),
        ),
        (
            GET,
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
            b"abc",
            Some(("content-length", "3")),
        ),
        // HEAD: the length of the body a GET would get, and no body.
        (
            HEAD,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
            b"",
            Some(("content-length", "1234")),
        ),
        (
            HEAD,
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"",
            None,
        ),
        (
            GET,
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            b"",
            None,
        ),
        (
            GET,
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"",
            None,
        ),
        (
            GET,
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"",
            None,
        ),
        // A 1xx before the final response: the final one is relayed.
        (
            GET,
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"ok",
            Some(("content-length", "2")),
        ),
        // An HTTP/1.0 client cannot read chunked: close-delimited.
        (
            b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"abc",
            None,
        ),
    ];
    for (i, (request, answer, body, framing)) in cases.iter().enumerate() {
        let up = wire::canned(answer).await;
        let gw = support::start(support::config(&[up.addr])).await;
        let msg = wire::response(gw.addr, request).await;
        let case = format!("case {i}: {:?} → {msg:?}", String::from_utf8_lossy(answer));
        assert!(msg.complete && msg.rest.is_empty(), "{case}");
        assert_eq!(msg.body, *body, "{case}");
        let te = msg.header("transfer-encoding");
        let cl = msg.header("content-length");
        assert!(te.is_none() || cl.is_none(), "two framings: {case}");
        match framing {
            Some((name, value)) => assert_eq!(msg.header(name), Some(*value), "{case}"),
            None => assert!(te.is_none() && cl.is_none(), "{case}"),
        }
    }
}

#[tokio::test]
async fn response_shorter_than_its_length_is_cut_and_logged_incomplete() {
    let up = upstream::raw(|mut stream, _| async move {
        let mut buf = [0u8; 4096];
        let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
            .await;
    })
    .await;
    let gw = support::start(support::config(&[up.addr])).await;
    let msg = wire::response(gw.addr, GET).await;
    assert_eq!(msg.header("content-length"), Some("10"), "{msg:?}");
    assert!(!msg.complete, "the client must see the cut: {msg:?}");
    let line = gw.next_log();
    assert_eq!(line["cause"], "http_response_incomplete", "{line}");
    assert_eq!(line["incomplete"], true, "{line}");
}

#[tokio::test]
async fn response_longer_than_its_length_passes_only_the_declared_bytes() {
    let up = wire::canned(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n0123456789").await;
    let gw = support::start(support::config(&[up.addr])).await;
    for _ in 0..2 {
        let msg = wire::response(gw.addr, GET).await;
        assert_eq!(msg.body, b"01234", "{msg:?}");
        assert!(msg.complete && msg.rest.is_empty(), "{msg:?}");
    }
}

#[tokio::test]
async fn upstream_transfer_coding_other_than_chunked_is_502_not_relayed_mislabelled() {
    let up = wire::canned(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    let gw = support::start(support::config(&[up.addr])).await;
    let msg = wire::response(gw.addr, GET).await;
    assert_eq!(msg.status(), 502, "{msg:?}");
    assert!(
        msg.header("proxy-status")
            .unwrap()
            .contains("error=http_protocol_error"),
        "{msg:?}"
    );
}

#[tokio::test]
async fn request_framing_upstream_follows_the_body_gatewise_read() {
    let (up, mut seen) = wire::capture().await;
    let gw = support::start(support::config(&[up.addr])).await;
    // (client request, body upstream, framing header upstream)
    type Up = (
        &'static [u8],
        &'static [u8],
        Option<(&'static str, &'static str)>,
    );
    let cases: &[Up] = &[
        // hyper drops the Content-Length sent with chunked; the small body is buffered.
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"hello",
            Some(("content-length", "5")),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            b"",
            Some(("content-length", "0")),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"",
            None,
        ),
        // `Connection` cannot name the framing away.
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close, content-length\r\n\r\nhello",
            b"hello",
            Some(("content-length", "5")),
        ),
        (
            b"POST / HTTP/1.0\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            b"hello",
            Some(("content-length", "5")),
        ),
    ];
    for (request, body, framing) in cases {
        let msg = wire::response(gw.addr, request).await;
        assert_eq!(msg.status(), 200, "{msg:?}");
        let up_msg = wire::next_request(&mut seen).await;
        let case = format!("{:?} → {up_msg:?}", String::from_utf8_lossy(request));
        assert!(
            up_msg.head.starts_with("post / http/1.1") || up_msg.head.starts_with("get / http/1.1"),
            "{case}"
        );
        assert_eq!(up_msg.body, *body, "{case}");
        let te = up_msg.header("transfer-encoding");
        let cl = up_msg.header("content-length");
        match framing {
            Some((name, value)) => assert_eq!(up_msg.header(name), Some(*value), "{case}"),
            None => assert!(te.is_none() && cl.is_none(), "{case}"),
        }
        assert!(te.is_none() || cl.is_none(), "two framings: {case}");
    }
}

#[tokio::test]
async fn streamed_body_of_unknown_length_goes_up_chunked_even_on_a_get() {
    // Before: hyper's client sends a GET of unknown length with no body at all.
    let (up, mut seen) = wire::capture().await;
    let gw = support::start(support::config(&[up.addr])).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"GET /q HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    // The body is sent only once the head is upstream: it cannot be buffered first.
    match tokio::time::timeout(std::time::Duration::from_secs(10), seen.recv()).await {
        Ok(Some(Seen::Head(head))) => {
            assert!(head.contains("transfer-encoding: chunked"), "{head}")
        }
        other => panic!("expected the head upstream first: {other:?}"),
    }
    s.write_all(b"5\r\nhello\r\n0\r\n\r\n").await.unwrap();
    let up_msg = wire::next_request(&mut seen).await;
    assert_eq!(up_msg.body, b"hello", "{up_msg:?}");
    let raw = wire::read_to_end(&mut s).await;
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
}

#[tokio::test]
async fn large_body_streams_up_with_its_declared_length() {
    let (up, mut seen) = wire::capture().await;
    let mut cfg = support::config(&[up.addr]);
    route_of(&mut cfg).replay_buffer = 4;
    let gw = support::start(cfg).await;
    let msg = wire::response(
        gw.addr,
        b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
    )
    .await;
    assert_eq!(msg.status(), 200, "{msg:?}");
    let up_msg = wire::next_request(&mut seen).await;
    assert_eq!(up_msg.header("content-length"), Some("11"), "{up_msg:?}");
    assert_eq!(up_msg.header("transfer-encoding"), None, "{up_msg:?}");
    assert_eq!(up_msg.body, b"hello world");
}

#[tokio::test]
async fn request_transfer_coding_other_than_chunked_is_refused_400() {
    let up = upstream::ok("hi").await;
    let gw = support::start(support::config(&[up.addr])).await;
    let msg = wire::response(
        gw.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(msg.status(), 400, "{msg:?}");
    assert_eq!(up.stats.requests(), 0);
}

#[tokio::test]
async fn unfinished_streamed_upload_does_not_hold_the_client_connection_open() {
    // Found by the round_trip fuzz target (fuzz/seeds/round_trip/unfinished-upload-after-early-answer): a
    // chunked upload that never finishes, answered by an upstream that then closed: the response
    // was relayed and the client connection stayed open with no deadline, waiting for the rest
    // of a body nobody would read.
    let up = upstream::raw(|mut stream, _| async move {
        let mut buf = [0u8; 4096];
        let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
        let _ = stream
            .write_all(b"\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nTranfesr-Encoding: chunked\r\n\r\n3\r\nabced\rJ")
            .await;
    })
    .await;
    let gw = support::start(support::config(&[up.addr])).await;
    let raw = wire::exchange(
        gw.addr,
        b"POSTOST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r",
    )
    .await;
    let msg = wire::decode(&raw, false, false, true).expect("a response");
    // hyper's client skips the blank lines before the status line: a 200 with a 5-byte body.
    assert_eq!(
        (msg.status(), msg.body.as_slice()),
        (200, &b"3\r\nab"[..]),
        "{msg:?}"
    );
}
