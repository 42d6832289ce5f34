//! One integration-test binary: in-process upstreams on 127.0.0.1:0, a real gateway, real clients.

mod support;

mod acme;
mod admin;
mod balance;
mod chaos;
mod client_h1;
mod config;
mod demo;
mod discovery_dns;
mod discovery_k8s;
mod doctor;
mod doctor_nginx;
mod drain;
mod explain;
mod failover;
mod fleet;
mod framing;
mod grpc;
mod hardening;
mod health;
mod hold;
mod http2;
mod http2_limits;
mod http2_translate;
mod http2_upstream;
mod idle;
mod metrics;
mod proxy;
mod reload;
mod run;
mod tls;
mod tls_upstream;
mod websocket;
mod workers;
