//! Configuration: the raw TOML shape (`file.rs`), its validation into the typed [`Config`]
//! (`validate.rs`), and the quick form built from `gatewise run --listen --to`.
//!
//! The request path only ever sees [`Config`]: every duration is a `Duration`, every address a
//! `SocketAddr`, every reference between sections (route → listener, route → upstream) resolved.

pub mod check;
mod file;
pub mod reload;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_acme;
mod validate;
mod validate_acme;
mod validate_fleet;
mod validate_http2;
mod validate_routes;
mod validate_tls;
mod validate_upstream;
mod values;

pub use validate::{parse, ConfigError, ConfigErrors};
pub use validate_fleet::{endpoint as fleet_endpoint, DEFAULT_PREFIX as DEFAULT_FLEET_PREFIX};
pub use validate_upstream::is_srv_name;
pub use values::{check_target, parse_duration};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated configuration. Build it with [`parse`], [`load`] or [`Config::quick`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Worker threads; `None` means one per core.
    pub workers: Option<usize>,
    /// How the worker threads share the work.
    pub worker_model: WorkerModel,
    pub admin: AdminConfig,
    pub access_log: AccessLog,
    /// On SIGTERM: how long `/ready` says 503 while traffic is still served, so load balancers
    /// stop sending before the listeners close.
    pub drain_delay: Duration,
    /// Reload when the config file changes (its directory is watched); SIGHUP and
    /// `POST /reload` work either way.
    pub watch_config: bool,
    /// Where a running gatewise hands its sockets to `run --takeover`; `None`: a path derived
    /// from the config file's (see `lifecycle::upgrade::default_socket`).
    pub upgrade_socket: Option<PathBuf>,
    /// After the listeners close: how long in-flight requests may take to finish.
    pub shutdown_timeout: Duration,
    pub listeners: Vec<ListenerConfig>,
    /// Routes in file order; the route table orders them by specificity.
    pub routes: Vec<RouteConfig>,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// `[fleet]`: routes and upstreams shared through etcd (`fleet/`); `None`: this file only.
    pub fleet: Option<FleetConfig>,
}

/// `[fleet]`: where the shared routes and upstreams live (docs/fleet.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// etcd client endpoints as `http://host:port`, tried in order.
    pub etcd: Vec<String>,
    /// Every key gatewise reads or writes starts with this.
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// `None` turns the admin listener off.
    pub listen: Option<SocketAddr>,
    /// Bearer token required for every admin endpoint except `/live` and `/ready` (from `token`
    /// or `token_file`). Required when `listen` is not a loopback address.
    pub token: Option<String>,
}

/// How the `workers` threads run (`worker_model`; docs/performance.md has the measurements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerModel {
    /// Each worker thread runs its own event loop (a current-thread runtime) and serves the
    /// connections it accepted, nginx's model; reloads, admin and health checks run on a
    /// separate control thread.
    #[default]
    PerWorker,
    /// One multi-threaded runtime whose threads steal each other's work; everything runs on it.
    WorkStealing,
}

impl WorkerModel {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerModel::PerWorker => "per_worker",
            WorkerModel::WorkStealing => "work_stealing",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AccessLog {
    Stdout,
    File(PathBuf),
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// Time a client has to send a complete request head.
    pub header_read_timeout: Duration,
    /// Largest request head accepted (bytes); larger gets 431.
    pub max_header_bytes: usize,
    /// Most request header fields accepted; more gets 431.
    pub max_headers: usize,
    /// Generated error responses name upstream addresses and details to every client, not only
    /// to loopback ones.
    pub expose_details: bool,
    /// TRACE is forwarded instead of refused with 405.
    pub allow_trace: bool,
    /// TLS termination; `None` serves plain HTTP.
    pub tls: Option<ListenerTlsConfig>,
    /// Plain listener only: answer every request with a 308 to the same URL over `https`.
    pub redirect_https: bool,
    /// HTTP/2 limits for the client connections that speak it (h2 by ALPN, h2c by preface).
    pub h2: Http2Limits,
}

/// A listener's HTTP/2 limits (`h2_*` keys). The header list size is `max_header_bytes`: one
/// limit on a request head whichever protocol carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Http2Limits {
    /// Streams a client may have open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Flow-control window of each stream: request body bytes a client may send ahead.
    pub initial_stream_window: u32,
    /// Flow-control window of the whole connection.
    pub initial_connection_window: u32,
    /// A PING is sent after this long without a frame from the client...
    pub keepalive_interval: Duration,
    /// ...and the connection is closed if its answer takes longer than this.
    pub keepalive_timeout: Duration,
    /// Streams reset by the client before gatewise accepted them, kept at most (reset-flood
    /// protection, CVE-2023-44487): more and the connection is closed with GOAWAY.
    pub max_pending_accept_reset_streams: usize,
    /// Streams gatewise may reset because the client broke the protocol on them before the
    /// connection is closed with GOAWAY (CVE-2019-9514-style floods).
    pub max_local_error_reset_streams: usize,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: defaults::H2_MAX_CONCURRENT_STREAMS,
            initial_stream_window: defaults::H2_INITIAL_STREAM_WINDOW,
            initial_connection_window: defaults::H2_INITIAL_CONNECTION_WINDOW,
            keepalive_interval: defaults::H2_KEEPALIVE_INTERVAL,
            keepalive_timeout: defaults::H2_KEEPALIVE_TIMEOUT,
            max_pending_accept_reset_streams: defaults::H2_MAX_PENDING_ACCEPT_RESET_STREAMS,
            max_local_error_reset_streams: defaults::H2_MAX_LOCAL_ERROR_RESET_STREAMS,
        }
    }
}

/// A listener's certificates and handshake limits (`tls = { ... }`).
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTlsConfig {
    /// Chosen by SNI; the first is the default for clients without SNI or with an unknown name.
    pub certificates: Vec<CertKeyPaths>,
    /// A client must finish its handshake within this; a stalled one is closed.
    pub handshake_timeout: Duration,
    /// How often the certificate files are checked for changes.
    pub reload_interval: Duration,
    /// A certificate closer than this to its expiry is warned about.
    pub expiry_warning: Duration,
    /// `acme = { ... }`: a certificate obtained and renewed from an ACME CA (`src/acme/`),
    /// served before the files of `certificates` for its names.
    pub acme: Option<AcmeCertConfig>,
}

/// One automatically managed certificate: the listener's `acme` table with the `[acme]`
/// section's settings filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeCertConfig {
    /// Contact address of the ACME account.
    pub email: String,
    /// DNS names the certificate is for (lower-case; the first names its files).
    pub domains: Vec<String>,
    pub challenge: AcmeChallenge,
    /// The ACME directory URL (`https://`).
    pub directory: String,
    /// Trust only these CAs when talking to the directory (a private ACME server).
    pub ca_bundle: Option<PathBuf>,
    /// Account key and certificates, kept across restarts.
    pub state_dir: PathBuf,
    /// Renew when less than this is left (or a third of the certificate's lifetime, if less).
    pub renew_before: Duration,
}

/// How the CA is shown that gatewise answers for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// RFC 8737: on the TLS listener itself, by a certificate for ALPN `acme-tls/1`.
    TlsAlpn01,
    /// RFC 8555 §8.3: `/.well-known/acme-challenge/TOKEN` on a plain listener (port 80).
    Http01,
}

/// A certificate chain file and its private key file (relative paths already resolved against
/// the config file's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How an upstream's targets are spoken to.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTlsConfig {
    /// Trust only this CA bundle instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Server name sent and verified; default: each target's host (or IP).
    pub sni: Option<String>,
    /// Client certificate for mTLS.
    pub client_cert: Option<CertKeyPaths>,
    /// Accept any certificate (warned about at start).
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// The route's identity across reloads and its metric label: the config's `name`, or
    /// `HOSTPATH_PREFIX` (e.g. `*/`, `api.example.com/v1`), with `@LISTENER` added when two
    /// listeners have the same host and prefix.
    pub name: String,
    /// Name of the listener this route belongs to (resolved and checked).
    pub listener: String,
    pub host: HostPattern,
    /// Always starts with `/`.
    pub path_prefix: String,
    /// Name of an upstream in [`Config::upstreams`] (checked).
    pub upstream: String,
    /// Overall deadline for the request, every attempt included.
    pub timeout: Duration,
    /// Deadline for one attempt to produce a response head.
    pub per_try_timeout: Duration,
    /// Idempotent requests with a replayable body get a second attempt on another target when
    /// the first has not answered after this long (first answer wins); `None`: off.
    pub hedge_after: Option<Duration>,
    /// Extra attempts after the first.
    pub retries: u32,
    /// Allow retrying non-idempotent requests that may have reached the upstream.
    pub retry_non_idempotent: bool,
    /// Upstream statuses that make an idempotent, replayable request try another target.
    pub retry_on_status: Vec<u16>,
    /// Request bodies up to this size are kept so the request can be replayed.
    pub replay_buffer: usize,
    /// Retries may add at most this fraction of the route's requests...
    pub retry_budget_ratio: f64,
    /// ...plus this many retries per second.
    pub retry_budget_per_second: u32,
    /// An upgraded connection (WebSocket) with no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
}

/// Which `Host` values a route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: any host.
    Any,
    /// `example.com`, compared case-insensitively, port ignored. Stored lower-case.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (stored as `.example.com`, lower-case).
    Suffix(String),
}

/// As written in the config: `*`, `example.com`, `*.example.com`.
impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    /// Power of two choices by decaying latency × requests in flight (`upstream::latency`).
    PeakEwma,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// `host:port` strings; names are resolved at connect time.
    pub targets: Vec<String>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// Pooled connection idle limit (shortened by the upstream's `Keep-Alive: timeout=`).
    pub idle_timeout: Duration,
    /// Learn, per target, the idle age at which the upstream closes pooled connections, and keep
    /// the idle limit below it.
    pub learn_idle_timeout: bool,
    /// Idle pooled connections kept per target.
    pub max_idle_per_target: usize,
    /// Concurrent requests per target; `None` means unlimited.
    pub max_connections: Option<u32>,
    /// Requests waiting for a free connection slot, per upstream.
    pub queue_size: usize,
    pub queue_timeout: Duration,
    /// Idle time allowed between two chunks of an upstream response body.
    pub body_idle_timeout: Duration,
    /// Largest upstream response head accepted (bytes).
    pub max_response_header_bytes: usize,
    pub health: Option<HealthConfig>,
    pub passive: PassiveConfig,
    /// Ramp window for a target that has just become healthy; zero turns it off.
    pub slow_start: Duration,
    /// Below this fraction of healthy targets, balance over all of them; `None` means off.
    pub panic_threshold: Option<f64>,
    /// Outage hold (R6): how long a request may wait for a target to come back when none can
    /// take it (never past the route deadline); zero answers 503 at once.
    pub outage_hold: Duration,
    /// Requests held at once per upstream; more are answered 503 at once.
    pub outage_hold_queue: usize,
    /// `protocol = "https"`, `"h2"` or `"auto"`: TLS to every target; `None` is plain.
    pub tls: Option<UpstreamTlsConfig>,
    /// Where the targets come from: the `targets` list as written (static), or a discovery
    /// source that replaces the list while serving (`src/discovery`).
    pub discovery: Discovery,
    /// What gatewise speaks to the targets (`protocol`).
    pub protocol: UpstreamProtocol,
    /// HTTP/2: concurrent streams gatewise opens on one connection before it opens another.
    pub h2_max_streams: u32,
    /// HTTP/2: connections per target at most; past them, streams queue on the least busy one.
    pub h2_max_connections: u32,
}

/// An upstream's `discovery` key. A running upstream's `targets` are the discovered set; the
/// file's `targets` are the source's input (for DNS: the names to resolve).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Discovery {
    /// No `discovery` key: `targets` is the list, names resolved at connect time.
    #[default]
    Static,
    /// `discovery = "dns"`: every `targets` entry is resolved on an interval, each address a
    /// target of its own.
    Dns(DnsDiscovery),
    /// `discovery = { kubernetes = { service = "app", ... } }`: the endpoints of a Service, read
    /// from its EndpointSlices (`targets` is not given).
    Kubernetes(KubernetesDiscovery),
}

impl Discovery {
    /// The source's name, as logs, `/status` and the metric label say it.
    pub fn source_name(&self) -> &'static str {
        match self {
            Discovery::Static => "static",
            Discovery::Dns(_) => "dns",
            Discovery::Kubernetes(_) => "kubernetes",
        }
    }
}

/// `discovery = { kubernetes = { ... } }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesDiscovery {
    pub service: String,
    /// `None`: the namespace of the credentials (the pod's own, or the kubeconfig context's),
    /// else `default`.
    pub namespace: Option<String>,
    /// A port name of the Service (`"http"`), `""` for its one unnamed port, or a number.
    pub port: String,
    /// Read this kubeconfig file instead of the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Talk to this URL without credentials (a test stand-in, or `kubectl proxy`).
    pub api_server: Option<String>,
}

/// `discovery = "dns"` and its `dns_*` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsDiscovery {
    /// How often names are resolved again (a shorter record TTL brings it forward).
    pub interval: Duration,
    /// Ask this nameserver (`dns_nameserver = "10.0.0.2:53"`) instead of the system's
    /// (`/etc/resolv.conf`).
    pub nameserver: Option<SocketAddr>,
}

/// `protocol` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over plain TCP (the default).
    Http1,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 with prior knowledge over plain TCP.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2` only).
    H2,
    /// TLS; ALPN decides per connection (`h2` preferred, else `http/1.1`).
    Auto,
}

impl UpstreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Https => "https",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::Auto => "auto",
        }
    }

    /// Whether every connection to the targets speaks HTTP/2 (`h2c`, `h2`).
    pub fn always_h2(self) -> bool {
        matches!(self, UpstreamProtocol::H2c | UpstreamProtocol::H2)
    }

    /// Whether connections to the targets speak TLS.
    pub fn is_tls(self) -> bool {
        matches!(
            self,
            UpstreamProtocol::Https | UpstreamProtocol::H2 | UpstreamProtocol::Auto
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheckKind {
    /// `GET path`; healthy when the status is in `expected_status` (inclusive range).
    Http {
        path: String,
        expected_status: (u16, u16),
    },
    /// A TCP connect that succeeds.
    Tcp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PassiveConfig {
    /// Consecutive failures that eject a target; 0 turns passive ejection off.
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
    /// Upstream statuses counted as failures (default: none; 502/503/504 are common choices).
    pub failure_statuses: Vec<u16>,
}

/// Defaults, in one place, shared by the file parser and the quick form.
pub mod defaults {
    use std::time::Duration;

    pub const ADMIN_LISTEN: &str = "127.0.0.1:9901";
    pub const DRAIN_DELAY: Duration = Duration::from_secs(5);
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const MAX_HEADER_BYTES: usize = 64 * 1024;
    pub const MAX_HEADERS: usize = 100;
    pub const EXPOSE_DETAILS: bool = false;
    pub const ALLOW_TRACE: bool = false;
    pub const H2_MAX_CONCURRENT_STREAMS: u32 = 250;
    pub const H2_INITIAL_STREAM_WINDOW: u32 = 1024 * 1024;
    pub const H2_INITIAL_CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
    pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
    pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
    pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
    pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
    /// `discovery = "dns"`: names are resolved again this often (or sooner, at a shorter TTL).
    pub const DNS_INTERVAL: Duration = Duration::from_secs(5);
    pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const PER_TRY_TIMEOUT: Duration = Duration::from_secs(5);
    pub const RETRIES: u32 = 2;
    pub const RETRY_ON_STATUS: [u16; 3] = [502, 503, 504];
    pub const REPLAY_BUFFER: usize = 64 * 1024;
    pub const RETRY_BUDGET_RATIO: f64 = 0.2;
    pub const RETRY_BUDGET_PER_SECOND: u32 = 10;
    /// Long: WebSocket apps often stay quiet for minutes (nginx's 60 s cuts them).
    pub const TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
    pub const BALANCE: super::Balance = super::Balance::PeakEwma;
    pub const LEARN_IDLE_TIMEOUT: bool = true;
    pub const MAX_IDLE_PER_TARGET: usize = 256;
    pub const QUEUE_SIZE: usize = 1024;
    pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
    pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    pub const HEALTH_RISE: u32 = 2;
    pub const HEALTH_FALL: u32 = 2;
    pub const HEALTH_EXPECTED_STATUS: (u16, u16) = (200, 399);
    pub const CONSECUTIVE_FAILURES: u32 = 5;
    pub const BASE_EJECTION: Duration = Duration::from_secs(5);
    pub const MAX_EJECTION: Duration = Duration::from_secs(300);
    pub const MAX_EJECTED_PERCENT: u32 = 50;
    pub const SLOW_START: Duration = Duration::from_secs(10);
    pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
    pub const TLS_EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);
    pub const OUTAGE_HOLD: Duration = Duration::from_secs(10);
    pub const OUTAGE_HOLD_QUEUE: usize = 4096;
    pub const ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
    pub const ACME_STAGING_DIRECTORY: &str =
        "https://acme-staging-v02.api.letsencrypt.org/directory";
    pub const ACME_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
    pub const H2_MAX_STREAMS: u32 = 100;
    pub const H2_MAX_CONNECTIONS: u32 = 4;
}

/// The name of a route whose config gives none: its host pattern and path prefix.
pub fn default_route_name(host: &HostPattern, path_prefix: &str) -> String {
    format!("{host}{path_prefix}")
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| ConfigErrors::io(path, e))?;
    parse(&src, &path.display().to_string())
}

impl ListenerConfig {
    pub fn new(name: &str, listen: SocketAddr) -> Self {
        Self {
            name: name.to_string(),
            listen,
            header_read_timeout: defaults::HEADER_READ_TIMEOUT,
            max_header_bytes: defaults::MAX_HEADER_BYTES,
            max_headers: defaults::MAX_HEADERS,
            tls: None,
            redirect_https: false,
            expose_details: defaults::EXPOSE_DETAILS,
            allow_trace: defaults::ALLOW_TRACE,
            h2: Http2Limits::default(),
        }
    }
}

impl RouteConfig {
    /// A catch-all route with every policy at its default.
    pub fn new(listener: &str, upstream: &str) -> Self {
        Self {
            name: default_route_name(&HostPattern::Any, "/"),
            listener: listener.to_string(),
            host: HostPattern::Any,
            path_prefix: "/".to_string(),
            upstream: upstream.to_string(),
            timeout: defaults::ROUTE_TIMEOUT,
            per_try_timeout: defaults::PER_TRY_TIMEOUT,
            hedge_after: None,
            retries: defaults::RETRIES,
            retry_non_idempotent: false,
            retry_on_status: defaults::RETRY_ON_STATUS.to_vec(),
            replay_buffer: defaults::REPLAY_BUFFER,
            retry_budget_ratio: defaults::RETRY_BUDGET_RATIO,
            retry_budget_per_second: defaults::RETRY_BUDGET_PER_SECOND,
            tunnel_idle_timeout: defaults::TUNNEL_IDLE_TIMEOUT,
        }
    }
}

impl UpstreamConfig {
    /// An upstream over `targets` with every policy at its default and no active check.
    pub fn new(targets: Vec<String>) -> Self {
        Self {
            targets,
            balance: defaults::BALANCE,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            idle_timeout: defaults::IDLE_TIMEOUT,
            learn_idle_timeout: defaults::LEARN_IDLE_TIMEOUT,
            max_idle_per_target: defaults::MAX_IDLE_PER_TARGET,
            max_connections: None,
            queue_size: defaults::QUEUE_SIZE,
            queue_timeout: defaults::QUEUE_TIMEOUT,
            body_idle_timeout: defaults::BODY_IDLE_TIMEOUT,
            max_response_header_bytes: defaults::MAX_RESPONSE_HEADER_BYTES,
            health: None,
            passive: PassiveConfig::default(),
            slow_start: defaults::SLOW_START,
            panic_threshold: None,
            outage_hold: defaults::OUTAGE_HOLD,
            outage_hold_queue: defaults::OUTAGE_HOLD_QUEUE,
            tls: None,
            discovery: Discovery::Static,
            protocol: UpstreamProtocol::Http1,
            h2_max_streams: defaults::H2_MAX_STREAMS,
            h2_max_connections: defaults::H2_MAX_CONNECTIONS,
        }
    }
}

impl Default for PassiveConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: defaults::CONSECUTIVE_FAILURES,
            base_ejection: defaults::BASE_EJECTION,
            max_ejection: defaults::MAX_EJECTION,
            max_ejected_percent: defaults::MAX_EJECTED_PERCENT,
            failure_statuses: Vec::new(),
        }
    }
}

impl HealthConfig {
    /// An HTTP check of `path` with default interval, timeout and thresholds.
    pub fn http(path: &str) -> Self {
        Self {
            kind: HealthCheckKind::Http {
                path: path.to_string(),
                expected_status: defaults::HEALTH_EXPECTED_STATUS,
            },
            interval: defaults::HEALTH_INTERVAL,
            timeout: defaults::HEALTH_TIMEOUT,
            rise: defaults::HEALTH_RISE,
            fall: defaults::HEALTH_FALL,
        }
    }
}

impl Config {
    /// The quick form: one listener, one catch-all route, one upstream over `targets`.
    pub fn quick(listen: SocketAddr, targets: Vec<String>) -> Self {
        let mut upstreams = BTreeMap::new();
        upstreams.insert("default".to_string(), UpstreamConfig::new(targets));
        Self {
            workers: None,
            worker_model: WorkerModel::default(),
            admin: AdminConfig {
                listen: Some(
                    defaults::ADMIN_LISTEN
                        .parse()
                        .expect("valid default address"),
                ),
                token: None,
            },
            access_log: AccessLog::Stdout,
            drain_delay: defaults::DRAIN_DELAY,
            watch_config: true,
            upgrade_socket: None,
            shutdown_timeout: defaults::SHUTDOWN_TIMEOUT,
            listeners: vec![ListenerConfig::new("public", listen)],
            routes: vec![RouteConfig::new("public", "default")],
            upstreams,
            fleet: None,
        }
    }
}
