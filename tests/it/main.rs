//! One integration-test binary: in-process upstreams on 127.0.0.1:0, a real gateway, real clients.

mod support;

mod chaos;
mod config;
mod demo;
mod drain;
mod explain;
mod failover;
mod framing;
mod hardening;
mod health;
mod metrics;
mod proxy;
mod run;
