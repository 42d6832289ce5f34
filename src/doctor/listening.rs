//! The host's listening TCP sockets, from `/proc/net/tcp` and `/proc/net/tcp6` (what `ss -tln`
//! reads), so "nothing listens on 127.0.0.1:3001" can add "127.0.0.1:3000 is listening".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Listening sockets of this host; empty where `/proc` is not there (not Linux, a sandbox).
pub fn sockets() -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            out.extend(parse(&text));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The LISTEN (`0A`) rows of a `/proc/net/tcp{,6}` table.
pub fn parse(table: &str) -> Vec<SocketAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let state = cols.nth(1)?;
            (state == "0A").then(|| address(local)).flatten()
        })
        .collect()
}

/// `0100007F:0BB8` → 127.0.0.1:3000; IPv6 is four 32-bit words, each in host (little) order.
fn address(hex: &str) -> Option<SocketAddr> {
    let (ip, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::swap_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4]
                    .copy_from_slice(&word(&ip[i * 8..i * 8 + 8])?.to_be_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether `ip` is an address of this host as far as a listening socket goes.
pub fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || sockets()
            .iter()
            .any(|s| s.ip() == ip && !s.ip().is_unspecified())
}

/// Sockets that would accept a connection to `ip` (same address, or a wildcard of its family),
/// nearest port first, at most `n`.
pub fn neighbours(all: &[SocketAddr], ip: IpAddr, port: u16, n: usize) -> Vec<SocketAddr> {
    let mut near: Vec<SocketAddr> = all
        .iter()
        .filter(|s| s.port() != port)
        .filter(|s| s.ip() == ip || (s.ip().is_unspecified() && s.is_ipv4() == ip.is_ipv4()))
        .map(|s| SocketAddr::new(ip, s.port()))
        .collect();
    near.sort_by_key(|s| (s.port().abs_diff(port), s.port()));
    near.dedup();
    near.truncate(n);
    near
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_rows_of_both_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   \
            1: 0100007F:0BB8 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n   \
            2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n";
        let want: Vec<SocketAddr> = vec![
            "127.0.0.1:3000".parse().unwrap(),
            "0.0.0.0:80".parse().unwrap(),
        ];
        assert_eq!(parse(v4), want);
        let v6 = "  sl  local_address                         remote_address                        st\n   \
            0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0\n";
        assert_eq!(parse(v6), vec!["[::1]:8080".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn neighbours_are_nearest_ports_on_the_same_address() {
        let all: Vec<SocketAddr> = [
            "127.0.0.1:3000",
            "0.0.0.0:8080",
            "10.0.0.1:3002",
            "127.0.0.1:9000",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let got = neighbours(&all, ip, 3001, 2);
        assert_eq!(
            got,
            vec![
                "127.0.0.1:3000".parse().unwrap(),
                "127.0.0.1:8080".parse().unwrap()
            ]
        );
    }
}
