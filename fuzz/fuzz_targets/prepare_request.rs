//! Fuzzes the request header rewrite (hop-by-hop removal, X-Forwarded-*, Forwarded, Via,
//! X-Request-Id) and the framing that follows it, on arbitrary header lines from any client
//! address: no input may panic, and what goes upstream holds the invariants a proxy owes it.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use gatewise::proxy::{framing, headers};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let client = if data[0] & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(data[1], 0, 2, data[2]))
    } else {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            data[1].into(),
            data[2].into(),
        ))
    };
    let length = match data[0] >> 6 {
        0 => None,
        n => Some(u64::from(n - 1) * 7),
    };
    let mut map = HeaderMap::new();
    for line in data[3..].split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    let id = headers::prepare_request(&mut map, SocketAddr::new(client, 4711));
    framing::request(&mut map, length);

    for gone in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "expect",
    ] {
        assert!(!map.contains_key(gone), "{gone} forwarded");
    }
    assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
    let xff = map["x-forwarded-for"].to_str().unwrap();
    assert!(xff.ends_with(&client.to_string()), "{xff}");
    let last_forwarded = map
        .get_all("forwarded")
        .iter()
        .last()
        .unwrap()
        .to_str()
        .unwrap();
    assert!(last_forwarded.starts_with("for="), "{last_forwarded}");
    assert!(last_forwarded.ends_with(";proto=http"), "{last_forwarded}");
    assert_eq!(map.get_all("via").iter().last().unwrap(), "1.1 gatewise");
    assert!(!id.is_empty());
    assert_eq!(map["x-request-id"], id);
    // One framing, and the one the body has.
    let te = map.get_all("transfer-encoding").iter().count();
    let cl = map.get_all("content-length").iter().count();
    match length {
        None => assert!(te == 1 && cl == 0 && map["transfer-encoding"] == "chunked"),
        Some(n) => {
            assert_eq!(te, 0);
            assert!(cl <= 1);
            if n > 0 {
                assert_eq!(map["content-length"], n.to_string().as_str());
            }
        }
    }
});
