//! One integration-test binary: in-process upstreams on 127.0.0.1:0, a real gateway, real clients.

mod support;

mod admin;
mod balance;
mod chaos;
mod config;
mod demo;
mod doctor;
mod doctor_nginx;
mod drain;
mod explain;
mod failover;
mod framing;
mod hardening;
mod health;
mod hold;
mod http2;
mod http2_limits;
mod idle;
mod metrics;
mod proxy;
mod reload;
mod run;
mod tls;
mod tls_upstream;
mod websocket;
mod workers;
