//! A listener's `h2_*` keys → [`Http2Limits`].

use toml::Spanned;

use super::file::{IntOrStr, Str};
use super::validate::Cx;
use super::{defaults, Http2Limits};

/// The raw `h2_*` keys of one listener.
pub(super) struct RawHttp2 {
    pub max_concurrent_streams: Option<Spanned<u32>>,
    pub initial_stream_window: Option<Spanned<IntOrStr>>,
    pub initial_connection_window: Option<Spanned<IntOrStr>>,
    pub keepalive_interval: Option<Str>,
    pub keepalive_timeout: Option<Str>,
    pub max_pending_accept_reset_streams: Option<Spanned<usize>>,
    pub max_local_error_reset_streams: Option<Spanned<usize>>,
}

/// Largest flow-control window HTTP/2 allows (RFC 9113 §6.9.1).
const MAX_WINDOW: usize = (1 << 31) - 1;
/// The window every HTTP/2 peer starts with; a smaller one would slow every upload.
const MIN_WINDOW: usize = 65_535;

pub(super) fn limits(cx: &mut Cx<'_>, raw: RawHttp2, f: &dyn Fn(&str) -> String) -> Http2Limits {
    let window = |cx: &mut Cx<'_>, v: Option<Spanned<IntOrStr>>, key: &str, default: u32| {
        let span = v.as_ref().map(Spanned::span);
        let n = cx.size(v, &f(key), default as usize);
        match span {
            Some(span) if !(MIN_WINDOW..=MAX_WINDOW).contains(&n) => {
                cx.err(
                    span,
                    &f(key),
                    format!("must be between {MIN_WINDOW} bytes (64 KiB - 1) and {MAX_WINDOW} bytes (2 GiB - 1)"),
                );
                default
            }
            _ => n as u32,
        }
    };
    Http2Limits {
        max_concurrent_streams: cx.nonzero(
            raw.max_concurrent_streams,
            &f("h2_max_concurrent_streams"),
            defaults::H2_MAX_CONCURRENT_STREAMS,
        ),
        initial_stream_window: window(
            cx,
            raw.initial_stream_window,
            "h2_initial_stream_window",
            defaults::H2_INITIAL_STREAM_WINDOW,
        ),
        initial_connection_window: window(
            cx,
            raw.initial_connection_window,
            "h2_initial_connection_window",
            defaults::H2_INITIAL_CONNECTION_WINDOW,
        ),
        keepalive_interval: cx.duration(
            raw.keepalive_interval,
            &f("h2_keepalive_interval"),
            defaults::H2_KEEPALIVE_INTERVAL,
            true,
        ),
        keepalive_timeout: cx.duration(
            raw.keepalive_timeout,
            &f("h2_keepalive_timeout"),
            defaults::H2_KEEPALIVE_TIMEOUT,
            true,
        ),
        // Zero is allowed for neither: 0 pending resets would close a connection on the first
        // ordinary cancel, and 0 local resets on the first stream error.
        max_pending_accept_reset_streams: cx.nonzero(
            raw.max_pending_accept_reset_streams,
            &f("h2_max_pending_accept_reset_streams"),
            defaults::H2_MAX_PENDING_ACCEPT_RESET_STREAMS,
        ),
        max_local_error_reset_streams: cx.nonzero(
            raw.max_local_error_reset_streams,
            &f("h2_max_local_error_reset_streams"),
            defaults::H2_MAX_LOCAL_ERROR_RESET_STREAMS,
        ),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, Http2Limits};
    use std::time::Duration;

    fn config(listener_keys: &str) -> String {
        format!(
            "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n{listener_keys}\n\
             [[route]]\nupstream = \"u\"\n[upstream.u]\ntargets = [\"127.0.0.1:2\"]\n"
        )
    }

    #[test]
    fn every_h2_key_is_converted_and_defaults_are_explicit() {
        let c = parse(&config(""), "t.toml").unwrap();
        assert_eq!(c.listeners[0].h2, Http2Limits::default());
        assert_eq!(c.listeners[0].h2.max_concurrent_streams, 250);
        // The header list size is max_header_bytes: big cookies and JWTs fit by default.
        assert!(c.listeners[0].max_header_bytes >= 64 * 1024);
        let keys = "h2_max_concurrent_streams = 10\nh2_initial_stream_window = \"256KiB\"\n\
                    h2_initial_connection_window = 1048576\nh2_keepalive_interval = \"5s\"\n\
                    h2_keepalive_timeout = \"2s\"\nh2_max_pending_accept_reset_streams = 5\n\
                    h2_max_local_error_reset_streams = 7";
        let c = parse(&config(keys), "t.toml").unwrap();
        assert_eq!(
            c.listeners[0].h2,
            Http2Limits {
                max_concurrent_streams: 10,
                initial_stream_window: 256 * 1024,
                initial_connection_window: 1024 * 1024,
                keepalive_interval: Duration::from_secs(5),
                keepalive_timeout: Duration::from_secs(2),
                max_pending_accept_reset_streams: 5,
                max_local_error_reset_streams: 7,
            }
        );
    }

    #[test]
    fn bad_h2_values_are_errors_on_their_line() {
        let keys = "h2_max_concurrent_streams = 0\nh2_initial_stream_window = 1000\n\
                    h2_initial_connection_window = \"4GiB\"\nh2_keepalive_interval = \"0s\"\n\
                    h2_max_pending_accept_reset_streams = 0";
        let errors = parse(&config(keys), "t.toml").unwrap_err().0;
        let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
        assert_eq!(
            got,
            [
                (4, "listener[0].h2_max_concurrent_streams"),
                (5, "listener[0].h2_initial_stream_window"),
                (6, "listener[0].h2_initial_connection_window"),
                (7, "listener[0].h2_keepalive_interval"),
                (8, "listener[0].h2_max_pending_accept_reset_streams"),
            ]
        );
    }
}
