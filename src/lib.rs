//! gatewise: a reverse proxy and load balancer that lets no avoidable 5xx through and explains
//! every one it returns.
//!
//! A request travels top to bottom: [`server`] accepts a connection and hands each request to
//! [`proxy::forward`], which matches a route ([`routing`]), picks a target ([`upstream::balancer`]),
//! takes a connection from our own pool ([`upstream::pool`]), sends, and streams the response back.
//! Failures are classified where they happen ([`cause`]), decided on by one retry rule
//! ([`proxy::retry`]), and written to the access log ([`observe::access_log`]) with every attempt.
//! [`config`] turns TOML into a typed [`config::Config`]; [`doctor`] diagnoses other proxies.

pub mod body;
pub mod cause;
pub mod cli;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod doctor;
pub mod gateway;
pub mod lifecycle;
pub mod observe;
pub mod proxy;
pub mod routing;
pub mod run;
pub mod server;
pub mod tls;
pub mod upstream;
