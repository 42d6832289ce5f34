//! Fuzzes the route table against a brute-force reference: for any set of routes and any
//! request host and path, `find` returns the first route in file order among the most specific
//! matches (exact host, then longest suffix, then `*`; then the longest path prefix), or none
//! when nothing matches. Input: lines `HOST PREFIX`, the last line being the request.
#![no_main]

use gatewise::config::HostPattern;
use gatewise::routing::RouteTable;
use libfuzzer_sys::fuzz_target;

fn pattern(s: &str) -> HostPattern {
    match s {
        "*" => HostPattern::Any,
        s if s.starts_with("*.") => HostPattern::Suffix(s[1..].to_ascii_lowercase()),
        s => HostPattern::Exact(s.to_ascii_lowercase()),
    }
}

/// The reference: the rules written out plainly, with no sorting.
fn host_part(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(host, |(h, _)| h);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn matches(p: &HostPattern, prefix: &str, host: &str, path: &str) -> bool {
    let host = host_part(host).to_ascii_lowercase();
    let host_ok = match p {
        HostPattern::Any => true,
        HostPattern::Exact(h) => *h == host,
        HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
    };
    let path_ok = path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || matches!(path.as_bytes()[prefix.len()], b'/' | b'?'));
    host_ok && path_ok
}

fn rank(p: &HostPattern, prefix: &str) -> (u8, usize, usize) {
    match p {
        HostPattern::Exact(_) => (0, 0, usize::MAX - prefix.len()),
        HostPattern::Suffix(s) => (1, usize::MAX - s.len(), usize::MAX - prefix.len()),
        HostPattern::Any => (2, 0, usize::MAX - prefix.len()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once(' ')).collect();
    let Some((host, path)) = lines.pop() else {
        return;
    };
    let routes: Vec<(HostPattern, String, usize)> = lines
        .iter()
        .enumerate()
        .filter(|(_, (_, prefix))| prefix.starts_with('/'))
        .map(|(i, (h, prefix))| (pattern(h), prefix.to_string(), i))
        .collect();
    // Only ASCII host names are ever built by the config (non-ASCII is refused there).
    if routes
        .iter()
        .any(|(p, _, _)| !matches!(p, HostPattern::Any) && !format!("{p:?}").is_ascii())
    {
        return;
    }
    let table = RouteTable::new(routes.clone());
    let expected = routes
        .iter()
        .filter(|(p, prefix, _)| matches(p, prefix, host, path))
        .min_by_key(|(p, prefix, i)| (rank(p, prefix), *i))
        .map(|(_, _, i)| *i);
    assert_eq!(
        table.find(host, path).copied(),
        expected,
        "{host:?} {path:?} in {routes:?}"
    );
});
