//! The route table: request host and path → route.
//!
//! Routes match by host (exact, `*.suffix`, `*`) and then by the longest path prefix. The table is
//! ordered once, at build time, so a lookup is a scan that stops at the first match: exact hosts
//! before suffixes (longest suffix first) before `*`, and within a host, longer prefixes first.

use crate::config::HostPattern;

/// Routes of one listener, ordered for first-match lookup.
#[derive(Debug)]
pub struct RouteTable<R> {
    entries: Vec<Entry<R>>,
}

#[derive(Debug)]
struct Entry<R> {
    host: HostPattern,
    path_prefix: String,
    route: R,
}

impl<R> RouteTable<R> {
    /// Builds a table from `(host, path_prefix, route)` triples in any order.
    pub fn new(routes: impl IntoIterator<Item = (HostPattern, String, R)>) -> Self {
        let mut entries: Vec<Entry<R>> = routes
            .into_iter()
            .map(|(host, path_prefix, route)| Entry {
                host,
                path_prefix,
                route,
            })
            .collect();
        // Stable sort: among equal keys, file order wins.
        entries.sort_by_key(|e| (host_rank(&e.host), std::cmp::Reverse(e.path_prefix.len())));
        Self { entries }
    }

    /// The route for `host` (a `Host` header value, port allowed) and `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<&R> {
        let host = strip_port(host);
        self.entries
            .iter()
            .find(|e| host_matches(&e.host, host) && path_matches(&e.path_prefix, path))
            .map(|e| &e.route)
    }

    pub fn iter(&self) -> impl Iterator<Item = &R> {
        self.entries.iter().map(|e| &e.route)
    }
}

/// Sort key: exact hosts first, then suffixes (longest first), then `*`.
fn host_rank(host: &HostPattern) -> (u8, std::cmp::Reverse<usize>) {
    match host {
        HostPattern::Exact(_) => (0, std::cmp::Reverse(0)),
        HostPattern::Suffix(s) => (1, std::cmp::Reverse(s.len())),
        HostPattern::Any => (2, std::cmp::Reverse(0)),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn host_matches(pattern: &HostPattern, host: &str) -> bool {
    match pattern {
        HostPattern::Any => true,
        HostPattern::Exact(name) => name.eq_ignore_ascii_case(host),
        HostPattern::Suffix(suffix) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
    }
}

/// `/api` matches `/api`, `/api/x` and `/api?q`, but not `/apix`; `/api/` matches `/api/x`.
fn path_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/')
        || path.len() == prefix.len()
        || matches!(path.as_bytes()[prefix.len()], b'/' | b'?')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable<&'static str> {
        RouteTable::new([
            (HostPattern::Any, "/".to_string(), "any-root"),
            (HostPattern::Any, "/api".to_string(), "any-api"),
            (
                HostPattern::Suffix(".example.com".into()),
                "/".to_string(),
                "suffix",
            ),
            (
                HostPattern::Suffix(".b.example.com".into()),
                "/".to_string(),
                "long-suffix",
            ),
            (
                HostPattern::Exact("a.example.com".into()),
                "/".to_string(),
                "exact",
            ),
            (
                HostPattern::Exact("a.example.com".into()),
                "/v2".to_string(),
                "exact-v2",
            ),
        ])
    }

    #[test]
    fn exact_host_beats_suffix_and_any() {
        let t = table();
        assert_eq!(t.find("a.example.com", "/"), Some(&"exact"));
        assert_eq!(t.find("A.Example.COM:8080", "/v2/x"), Some(&"exact-v2"));
        assert_eq!(t.find("a.example.com", "/v2x"), Some(&"exact"));
    }

    #[test]
    fn longest_suffix_wins() {
        let t = table();
        assert_eq!(t.find("x.b.example.com", "/"), Some(&"long-suffix"));
        assert_eq!(t.find("c.example.com", "/api"), Some(&"suffix"));
        // The bare domain is not a subdomain of itself.
        assert_eq!(t.find("example.com", "/"), Some(&"any-root"));
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let t = table();
        assert_eq!(t.find("other", "/api"), Some(&"any-api"));
        assert_eq!(t.find("other", "/api/users"), Some(&"any-api"));
        assert_eq!(t.find("other", "/api?x=1"), Some(&"any-api"));
        assert_eq!(t.find("other", "/apix"), Some(&"any-root"));
    }

    #[test]
    fn no_match_is_none() {
        let t = RouteTable::new([(HostPattern::Exact("a".into()), "/".to_string(), 1)]);
        assert_eq!(t.find("b", "/"), None);
        assert_eq!(t.find("[::1]:80", "/"), None);
    }
}
