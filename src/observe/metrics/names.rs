//! Every metric name gatewise exposes, with its help text. `docs/metrics.md` documents each;
//! a name changes here and there together. Counter names include `_total`, as exposed.

pub const REQUESTS: &str = "gatewise_requests_total";
pub const REQUESTS_HELP: &str =
    "Client requests by route, status sent and cause (\"none\" unless gatewise generated the error or the body was cut)";

pub const REQUEST_DURATION: &str = "gatewise_request_duration_seconds";
pub const REQUEST_DURATION_HELP: &str =
    "Time from request received to the last response byte sent, by route";

pub const UPSTREAM_ATTEMPTS: &str = "gatewise_upstream_attempts_total";
pub const UPSTREAM_ATTEMPTS_HELP: &str =
    "Attempts on a target by outcome: the status code received, or the cause of the failure";

pub const RETRIES: &str = "gatewise_retries_total";
pub const RETRIES_HELP: &str = "Retries made, by route and the rule that allowed them";

pub const RETRY_STOPS: &str = "gatewise_retry_stops_total";
pub const RETRY_STOPS_HELP: &str =
    "Failed attempts not retried, by route and the first condition that refused the retry";

pub const RETRY_BUDGET_EXHAUSTED: &str = "gatewise_retry_budget_exhausted_total";
pub const RETRY_BUDGET_EXHAUSTED_HELP: &str =
    "Retries the rule allowed but the route's retry budget refused";

pub const UPSTREAM_HEALTH_STATE: &str = "gatewise_upstream_health_state";
pub const UPSTREAM_HEALTH_STATE_HELP: &str =
    "1 for the target's current health state, 0 for the others";

pub const HEALTH_TRANSITIONS: &str = "gatewise_health_transitions_total";
pub const HEALTH_TRANSITIONS_HELP: &str = "Health state changes of a target, by the state entered";

pub const EJECTIONS: &str = "gatewise_ejections_total";
pub const EJECTIONS_HELP: &str = "Passive ejections of a target (outlier detection)";

pub const UPSTREAM_IN_FLIGHT: &str = "gatewise_upstream_in_flight";
pub const UPSTREAM_IN_FLIGHT_HELP: &str = "Requests in flight to a target now";

pub const UPSTREAM_IDLE_CONNECTIONS: &str = "gatewise_upstream_idle_connections";
pub const UPSTREAM_IDLE_CONNECTIONS_HELP: &str =
    "Idle keep-alive connections pooled for a target now";

pub const UPSTREAM_IDLE_LIMIT: &str = "gatewise_upstream_idle_limit_seconds";
pub const UPSTREAM_IDLE_LIMIT_HELP: &str =
    "Idle limit of a target's pooled connections by source: configured, announced (Keep-Alive: timeout=) and learned (from the idle age at which the target closed connections)";

pub const QUEUE_DEPTH: &str = "gatewise_queue_depth";
pub const QUEUE_DEPTH_HELP: &str =
    "Requests waiting for a free slot on an upstream (every target at max_connections)";

pub const QUEUE_REJECTIONS: &str = "gatewise_queue_rejections_total";
pub const QUEUE_REJECTIONS_HELP: &str =
    "Requests turned away by an upstream's wait queue: queue_full or queue_timeout";

pub const HOLD_DEPTH: &str = "gatewise_hold_depth";
pub const HOLD_DEPTH_HELP: &str =
    "Requests held now waiting for a target of an upstream to come back (outage hold)";

pub const HELD_REQUESTS: &str = "gatewise_held_requests_total";
pub const HELD_REQUESTS_HELP: &str =
    "Requests that entered an upstream's outage hold (each counted once)";

pub const HOLD_REJECTIONS: &str = "gatewise_hold_rejections_total";
pub const HOLD_REJECTIONS_HELP: &str =
    "Requests the outage hold answered 503: hold_timeout (outage_hold or the deadline passed) or hold_full";

pub const ACCESS_LOG_DROPPED: &str = "gatewise_access_log_dropped_total";
pub const ACCESS_LOG_DROPPED_HELP: &str =
    "Access-log lines dropped because the destination could not keep up (queue full)";

pub const TUNNELS_OPEN: &str = "gatewise_tunnels_open";
pub const TUNNELS_OPEN_HELP: &str = "Upgraded connections (WebSocket tunnels) open now, by route";

pub const TUNNELS: &str = "gatewise_tunnels_total";
pub const TUNNELS_HELP: &str =
    "Upgraded connections (WebSocket tunnels) ended, by route and who closed: client, upstream, idle_timeout, shutdown";
pub const CLIENT_CONNECTIONS: &str = "gatewise_client_connections_total";
pub const CLIENT_CONNECTIONS_HELP: &str =
    "Client connections accepted, by listener and the protocol the client chose: h1 (HTTP/1.x) or h2 (HTTP/2 by ALPN or h2c prior knowledge)";

pub const CLIENT_HEADER_TIMEOUTS: &str = "gatewise_client_header_timeouts_total";
pub const CLIENT_HEADER_TIMEOUTS_HELP: &str =
    "HTTP/1 client connections that began a request head and did not complete it within header_read_timeout (answered 408 and closed), by listener";

pub const PROTOCOL_REQUESTS: &str = "gatewise_requests_by_protocol_total";
pub const PROTOCOL_REQUESTS_HELP: &str =
    "Client requests by route, the protocol the client spoke (h1, h2) and the one gatewise spoke to the target that answered (h1, h2; none when no target answered)";

pub const GRPC_RESPONSES: &str = "gatewise_grpc_responses_total";
pub const GRPC_RESPONSES_HELP: &str =
    "gRPC calls by route and the grpc-status the client got (the upstream's, or the one gatewise answered with)";

pub const RELOADS: &str = "gatewise_config_reloads_total";
pub const RELOADS_HELP: &str =
    "Config reloads by result: ok (a new snapshot serves) or failed (the running config was kept)";

pub const FLEET_CONNECTED: &str = "gatewise_fleet_etcd_connected";
pub const FLEET_CONNECTED_HELP: &str =
    "1 while the watch on the fleet config in etcd is established, 0 while etcd cannot be reached (the running config serves on)";
pub const FLEET_REVISION: &str = "gatewise_fleet_revision";
pub const FLEET_REVISION_HELP: &str =
    "etcd mod revision of the fleet config serving; 0 before one was applied";
pub const FLEET_UPDATES: &str = "gatewise_fleet_updates_total";
pub const FLEET_UPDATES_HELP: &str =
    "Fleet config changes read from etcd, by result: applied, or refused (invalid: the running config was kept)";

pub const CONFIG_GENERATION: &str = "gatewise_config_generation";
pub const CONFIG_GENERATION_HELP: &str =
    "Generation of the config serving now: 1 at start, +1 for every applied reload";

pub const CONFIG_LAST_RELOAD: &str = "gatewise_config_last_reload_timestamp_seconds";
pub const CONFIG_LAST_RELOAD_HELP: &str =
    "Unix time of the last reload attempt (ok or failed); 0 before the first";
pub const TLS_CERTIFICATE_EXPIRY: &str = "gatewise_tls_certificate_expiry_seconds";
pub const TLS_CERTIFICATE_EXPIRY_HELP: &str =
    "Seconds until a certificate a TLS listener serves expires (negative once expired), by listener and the certificate's first name";

pub const ACME_CERTIFICATE_EXPIRY: &str = "gatewise_acme_certificate_expiry_seconds";
pub const ACME_CERTIFICATE_EXPIRY_HELP: &str =
    "Seconds until an automatic (ACME) certificate expires, by its first name; absent until one is obtained";
pub const ACME_ORDERS: &str = "gatewise_acme_orders_total";
pub const ACME_ORDERS_HELP: &str =
    "ACME orders (obtain or renew) by certificate and result (ok, failed)";
pub const ACME_LAST_ATTEMPT: &str = "gatewise_acme_last_attempt_timestamp_seconds";
pub const ACME_LAST_ATTEMPT_HELP: &str =
    "Unix time of the last ACME order attempt for a certificate; 0 before the first";
pub const ACME_LAST_ATTEMPT_OK: &str = "gatewise_acme_last_attempt_success";
pub const ACME_LAST_ATTEMPT_OK_HELP: &str =
    "1 when the last ACME order attempt for a certificate succeeded, 0 when it failed (or none yet)";

pub const DISCOVERY_ERRORS: &str = "gatewise_discovery_errors_total";
pub const DISCOVERY_ERRORS_HELP: &str =
    "Discovery answers that could not be used (source failed, or answered an empty set), by upstream and source; the last good targets kept serving";

pub const DISCOVERY_UPDATES: &str = "gatewise_discovery_updates_total";
pub const DISCOVERY_UPDATES_HELP: &str =
    "Target sets from a discovery source that changed an upstream's targets or their readiness, by upstream and source";

pub const DISCOVERY_LAST_SUCCESS: &str = "gatewise_discovery_last_success_timestamp_seconds";
pub const DISCOVERY_LAST_SUCCESS_HELP: &str =
    "Unix time of the last usable answer from an upstream's discovery source; 0 before the first";

pub const DISCOVERY_TARGETS: &str = "gatewise_discovery_targets";
pub const DISCOVERY_TARGETS_HELP: &str =
    "Targets of an upstream from its discovery source now, by readiness (ready, draining)";
