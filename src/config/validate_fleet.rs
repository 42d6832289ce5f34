//! `[fleet]`: etcd endpoints and the key prefix. Only plain HTTP to a loopback etcd is spoken
//! (no TLS, no auth: docs/fleet.md), so anything else is refused here rather than downgraded.

use toml::Spanned;

use super::file::RawFleet;
use super::validate::Cx;
use super::FleetConfig;

pub const DEFAULT_ETCD: &str = "127.0.0.1:2379";
pub const DEFAULT_PREFIX: &str = "/gatewise/";

pub(super) fn fleet_config(cx: &mut Cx<'_>, raw: Spanned<RawFleet>) -> Option<FleetConfig> {
    let RawFleet { etcd, prefix } = raw.into_inner();
    let etcd = match etcd {
        None => vec![endpoint(DEFAULT_ETCD).expect("valid default endpoint")],
        Some(list) if list.get_ref().is_empty() => {
            cx.err(list.span(), "fleet.etcd", "needs at least one endpoint");
            return None;
        }
        Some(list) => {
            let mut out = Vec::new();
            for e in list.into_inner() {
                if let Some(url) = cx.check(endpoint(e.get_ref()), e.span(), "fleet.etcd") {
                    out.push(url);
                }
            }
            out
        }
    };
    let prefix = match prefix {
        None => DEFAULT_PREFIX.to_string(),
        Some(p) if p.get_ref().is_empty() => {
            cx.err(p.span(), "fleet.prefix", "must not be empty");
            return None;
        }
        Some(p) => p.into_inner(),
    };
    // Empty: every endpoint was refused (and reported).
    (!etcd.is_empty()).then_some(FleetConfig { etcd, prefix })
}

/// `host:port` or `http://host:port` on a loopback address → `http://host:port`.
pub fn endpoint(written: &str) -> Result<String, String> {
    if written.starts_with("https://") {
        return Err(format!(
            "{written:?}: TLS to etcd is not supported; gatewise speaks plain HTTP to an etcd \
             member on the same machine (a loopback endpoint like \"127.0.0.1:2379\")"
        ));
    }
    let hostport = written.strip_prefix("http://").unwrap_or(written);
    let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
    if hostport.contains("://") || hostport.contains('/') || hostport.contains('@') {
        return Err(format!(
            "{written:?}: expected HOST:PORT or http://HOST:PORT, like \"127.0.0.1:2379\""
        ));
    }
    let (host, port) = hostport.rsplit_once(':').ok_or_else(|| {
        format!("{written:?}: expected HOST:PORT or http://HOST:PORT, like \"127.0.0.1:2379\"")
    })?;
    port.parse::<u16>()
        .map_err(|_| format!("{written:?}: {port:?} is not a port number"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(format!(
            "{written:?}: not a loopback address; gatewise talks to etcd without TLS or auth, so \
             only an etcd member on the same machine is accepted (docs/fleet.md)"
        ));
    }
    Ok(format!("http://{hostport}"))
}

#[cfg(test)]
mod tests {
    use super::endpoint;
    use crate::config::parse;

    const LISTENER: &str = "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n";

    #[test]
    fn a_fleet_instance_needs_no_route_and_gets_the_defaults() {
        let c = parse(&format!("{LISTENER}[fleet]\n"), "f.toml").unwrap();
        let fleet = c.fleet.unwrap();
        assert_eq!(fleet.etcd, ["http://127.0.0.1:2379"]);
        assert_eq!(fleet.prefix, "/gatewise/");
        assert!(c.routes.is_empty());
        let e = parse(LISTENER, "f.toml").unwrap_err().to_string();
        assert!(e.contains("at least one route is required"), "{e}");
    }

    #[test]
    fn bad_fleet_settings_are_reported_where_they_are() {
        let src = format!(
            "{LISTENER}[fleet]\netcd = [\"127.0.0.1:2379\", \"https://127.0.0.1:2379\"]\nprefix = \"\"\nwatch = true\n"
        );
        let e = parse(&src, "f.toml").unwrap_err().to_string();
        assert!(
            e.contains(
                "f.toml:5:27: fleet.etcd: \"https://127.0.0.1:2379\": TLS to etcd is not supported"
            ),
            "{e}"
        );
        assert!(e.contains("fleet.watch: unknown field `watch`"), "{e}");
        let e = parse(&format!("{LISTENER}[fleet]\nprefix = \"\"\n"), "f.toml").unwrap_err();
        assert!(
            e.to_string()
                .contains("f.toml:5:10: fleet.prefix: must not be empty"),
            "{e}"
        );
        let e = parse(&format!("{LISTENER}[fleet]\netcd = []\n"), "f.toml").unwrap_err();
        assert!(
            e.to_string()
                .contains("fleet.etcd: needs at least one endpoint"),
            "{e}"
        );
    }

    #[test]
    fn endpoints_are_loopback_plain_http_only() {
        assert_eq!(endpoint("127.0.0.1:2379").unwrap(), "http://127.0.0.1:2379");
        assert_eq!(
            endpoint("http://localhost:2379/").unwrap(),
            "http://localhost:2379"
        );
        assert_eq!(endpoint("[::1]:2379").unwrap(), "http://[::1]:2379");
        assert!(endpoint("https://127.0.0.1:2379")
            .unwrap_err()
            .contains("TLS"));
        assert!(endpoint("10.0.0.5:2379").unwrap_err().contains("loopback"));
        assert!(endpoint("127.0.0.1").unwrap_err().contains("HOST:PORT"));
        assert!(endpoint("127.0.0.1:x").unwrap_err().contains("port"));
        assert!(endpoint("http://u@127.0.0.1:2379").is_err());
    }
}
