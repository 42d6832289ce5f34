//! What `doctor --nginx` reads from a parsed nginx config: the `upstream` blocks and every
//! `proxy_pass` with the proxy settings in force there (inherited http → server → location,
//! `proxy_set_header` replaced as a whole by the innermost level that has any, as nginx does).

use std::collections::BTreeMap;
use std::time::Duration;

use super::parse::Directive;

/// `server ADDR params;` in an `upstream` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// `host:port` (port 80 added when absent).
    pub addr: String,
    pub at: String,
    /// `max_fails=N` when written (nginx's default is 1).
    pub max_fails: Option<u32>,
    /// `fail_timeout=T` when written (nginx's default is 10 s).
    pub fail_timeout: Option<Duration>,
    pub backup: bool,
    pub down: bool,
    /// `resolve`: nginx re-resolves the name (needs a `zone`).
    pub resolve: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    pub at: String,
    pub servers: Vec<Server>,
    /// `keepalive N`: idle connections kept per worker.
    pub keepalive: Option<u32>,
    /// How long nginx reuses an idle upstream connection (`keepalive_timeout` in the upstream
    /// block, default 60 s).
    pub keepalive_timeout: Duration,
}

/// One `proxy_pass` and the settings in force where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Proxy {
    pub at: String,
    /// `location` argument(s), for the sentences.
    pub location: String,
    pub url: String,
    pub http_version: String,
    /// The value of `proxy_set_header Connection`, when set.
    pub connection: Option<String>,
    pub read_timeout: Duration,
    pub buffer_size: usize,
    /// A `resolver` is in force.
    pub resolver: bool,
}

impl Proxy {
    /// `http` or `https`, and `host:port` (or an upstream name) of the URL; `None` with variables.
    pub fn destination(&self) -> Option<(&str, String)> {
        let (scheme, rest) = self.url.split_once("://")?;
        let authority = rest.split('/').next().unwrap_or(rest);
        if authority.contains('$') || authority.is_empty() {
            return None;
        }
        Some((scheme, authority.to_string()))
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Model {
    pub upstreams: BTreeMap<String, Upstream>,
    pub proxies: Vec<Proxy>,
}

/// nginx's defaults for the settings read here.
#[derive(Debug, Clone)]
struct Ctx {
    http_version: String,
    headers: Option<Vec<(String, String)>>,
    read_timeout: Duration,
    buffer_size: usize,
    resolver: bool,
    location: String,
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx {
            http_version: "1.0".into(),
            headers: None,
            read_timeout: Duration::from_secs(60),
            // One memory page: 4k on x86-64 and most arm64 Linux.
            buffer_size: 4096,
            resolver: false,
            location: String::new(),
        }
    }
}

pub fn build(tree: &[Directive]) -> Model {
    let mut m = Model::default();
    walk(tree, &Ctx::default(), &mut m);
    m
}

fn walk(level: &[Directive], parent: &Ctx, m: &mut Model) {
    let mut ctx = parent.clone();
    let mut headers: Vec<(String, String)> = Vec::new();
    for d in level {
        let a = |i: usize| d.args.get(i).map(String::as_str).unwrap_or("");
        match d.name.as_str() {
            "proxy_http_version" => ctx.http_version = a(0).to_string(),
            "proxy_read_timeout" => {
                if let Some(t) = time(a(0)) {
                    ctx.read_timeout = t;
                }
            }
            "proxy_buffer_size" => {
                if let Some(s) = size(a(0)) {
                    ctx.buffer_size = s;
                }
            }
            "resolver" => ctx.resolver = true,
            "proxy_set_header" => headers.push((a(0).to_ascii_lowercase(), a(1).to_string())),
            _ => {}
        }
    }
    if !headers.is_empty() {
        ctx.headers = Some(headers);
    }
    for d in level {
        match (d.name.as_str(), &d.block) {
            ("upstream", Some(body)) => {
                let up = upstream(d, body);
                m.upstreams.insert(up.name.clone(), up);
            }
            ("location", Some(body)) => {
                let mut inner = ctx.clone();
                inner.location = d.args.join(" ");
                walk(body, &inner, m);
            }
            (_, Some(body)) => walk(body, &ctx, m),
            ("proxy_pass", None) => m.proxies.push(Proxy {
                at: d.at.clone(),
                location: ctx.location.clone(),
                url: d.args.first().cloned().unwrap_or_default(),
                http_version: ctx.http_version.clone(),
                connection: ctx
                    .headers
                    .as_ref()
                    .and_then(|h| h.iter().rev().find(|(n, _)| n == "connection"))
                    .map(|(_, v)| v.clone()),
                read_timeout: ctx.read_timeout,
                buffer_size: ctx.buffer_size,
                resolver: ctx.resolver,
            }),
            _ => {}
        }
    }
}

fn upstream(d: &Directive, body: &[Directive]) -> Upstream {
    let mut up = Upstream {
        name: d.args.first().cloned().unwrap_or_default(),
        at: d.at.clone(),
        servers: Vec::new(),
        keepalive: None,
        keepalive_timeout: Duration::from_secs(60),
    };
    for s in body {
        match s.name.as_str() {
            "keepalive" => up.keepalive = s.args.first().and_then(|n| n.parse().ok()),
            "keepalive_timeout" => {
                if let Some(t) = s.args.first().and_then(|t| time(t)) {
                    up.keepalive_timeout = t;
                }
            }
            "server" => {
                let Some(addr) = s.args.first() else { continue };
                let mut server = Server {
                    addr: with_port(addr),
                    at: s.at.clone(),
                    max_fails: None,
                    fail_timeout: None,
                    backup: false,
                    down: false,
                    resolve: false,
                };
                for p in &s.args[1..] {
                    match p.split_once('=') {
                        Some(("max_fails", n)) => server.max_fails = n.parse().ok(),
                        Some(("fail_timeout", t)) => server.fail_timeout = time(t),
                        _ if p == "backup" => server.backup = true,
                        _ if p == "down" => server.down = true,
                        _ if p == "resolve" => server.resolve = true,
                        _ => {}
                    }
                }
                up.servers.push(server);
            }
            _ => {}
        }
    }
    up
}

/// `host` → `host:80`; `unix:` sockets are kept as they are.
pub fn with_port(addr: &str) -> String {
    let has_port = match addr.rsplit_once(':') {
        Some((h, p)) => {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']'))
        }
        None => false,
    };
    if has_port || addr.starts_with("unix:") {
        addr.to_string()
    } else {
        format!("{addr}:80")
    }
}

/// nginx times: `60`, `60s`, `500ms`, `1m`, `1h`, `1d`, and sums like `1m30s`.
pub fn time(s: &str) -> Option<Duration> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok().map(Duration::from_secs);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let n_len = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..n_len].parse().ok()?;
        let tail = &rest[n_len..];
        let (unit, len) = if tail.starts_with("ms") {
            (1u64, 2)
        } else {
            let u = match tail.as_bytes().first()? {
                b's' => 1000,
                b'm' => 60_000,
                b'h' => 3_600_000,
                b'd' => 86_400_000,
                b'w' => 604_800_000,
                _ => return None,
            };
            (u, 1)
        };
        total = total.checked_add(Duration::from_millis(n.checked_mul(unit)?))?;
        rest = &tail[len..];
    }
    Some(total)
}

/// nginx sizes: `4096`, `4k`, `8K`, `1m`.
pub fn size(s: &str) -> Option<usize> {
    let (num, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes() {
        assert_eq!(time("60"), Some(Duration::from_secs(60)));
        assert_eq!(time("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(time("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(time("x"), None);
        assert_eq!(size("8k"), Some(8192));
        assert_eq!(size("4096"), Some(4096));
        assert_eq!(size("k"), None);
        assert_eq!(with_port("app"), "app:80");
        assert_eq!(with_port("[::1]:81"), "[::1]:81");
        assert_eq!(with_port("10.0.0.1:8080"), "10.0.0.1:8080");
    }

    #[test]
    fn settings_inherit_and_headers_replace_as_a_whole() {
        let src = "http { proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_read_timeout 5s;\n\
                   upstream app { server a:1 max_fails=1 fail_timeout=3s; server b:2 backup; keepalive 4; }\n\
                   server { location /a { proxy_pass http://app; }\n\
                            location /b { proxy_set_header Host $host; proxy_pass http://app; } } }";
        let tree = super::super::parse::parse_str(src, "n.conf", &mut Vec::new());
        let m = build(&tree);
        let up = &m.upstreams["app"];
        assert_eq!(up.keepalive, Some(4));
        assert_eq!(up.servers[0].max_fails, Some(1));
        assert_eq!(up.servers[0].fail_timeout, Some(Duration::from_secs(3)));
        assert!(up.servers[1].backup);
        assert_eq!(m.proxies.len(), 2);
        assert_eq!(m.proxies[0].connection.as_deref(), Some(""));
        assert_eq!(m.proxies[0].http_version, "1.1");
        assert_eq!(m.proxies[0].read_timeout, Duration::from_secs(5));
        // A proxy_set_header at the location drops every inherited one, Connection included.
        assert_eq!(m.proxies[1].connection, None);
        assert_eq!(m.proxies[1].location, "/b");
    }
}
