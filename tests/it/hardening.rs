//! Hardening (issue #11), raw bytes in and out: one authority per request, internal addresses
//! kept from clients, failures that are no longer quiet.

use crate::support::upstream;
use crate::support::wire;
use crate::support::{self, host, route_of};

#[tokio::test]
async fn absolute_form_target_authority_is_the_one_host_everywhere() {
    // Before: routed and sent up as other.test, but X-Forwarded-Host, Forwarded host= and the
    // access log said h.test.
    let up = upstream::echo().await;
    let mut cfg = support::config(&[up.addr]);
    route_of(&mut cfg).host = host("other.test");
    let gw = support::start(cfg).await;
    let msg = wire::response(
        gw.addr,
        b"GET http://other.test/x HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(msg.status(), 200, "{msg:?}");
    assert_eq!(msg.header("x-echo-host"), Some("other.test"), "{msg:?}");
    assert_eq!(msg.header("x-echo-x-forwarded-host"), Some("other.test"));
    let forwarded = msg.header("x-echo-forwarded").unwrap();
    assert!(forwarded.contains("host=\"other.test\""), "{forwarded}");
    let line = gw.next_log();
    assert_eq!(line["host"], "other.test", "{line}");
    assert_eq!(line["path"], "/x", "{line}");

    // The Host header alone does not route an absolute-form request.
    let msg = wire::response(
        gw.addr,
        b"GET http://h.test/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(msg.status(), 404, "{msg:?}");
    assert_eq!(gw.next_log()["host"], "h.test");
}
