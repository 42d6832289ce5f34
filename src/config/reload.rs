//! What a reload changes: the diff of two validated configs by identity — listener name, route
//! name, upstream name, target address. Pure, so it is tested without a socket; the gateway
//! applies it (`gateway/reload.rs`) and reports it (log line, `POST /reload` answer).

use std::fmt;

use serde::Serialize;

use super::Config;

/// Names added, removed and changed in one section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    fn of<T: PartialEq>(old: &[(String, T)], new: &[(String, T)]) -> Changes {
        let find = |list: &'_ [(String, T)], name: &str| -> Option<usize> {
            list.iter().position(|(n, _)| n == name)
        };
        let mut c = Changes::default();
        for (name, v) in new {
            match find(old, name) {
                None => c.added.push(name.clone()),
                Some(i) if old[i].1 != *v => c.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        for (name, _) in old {
            if find(new, name).is_none() {
                c.removed.push(name.clone());
            }
        }
        c
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Everything a reload changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub listeners: Changes,
    pub routes: Changes,
    pub upstreams: Changes,
    /// Targets as `upstream/address`.
    pub targets: Changes,
    /// Settings that only take effect at the next start (kept as they are until then).
    pub needs_restart: Vec<String>,
}

impl Diff {
    pub fn between(old: &Config, new: &Config) -> Diff {
        let listeners = |c: &Config| {
            c.listeners
                .iter()
                .map(|l| (l.name.clone(), l.clone()))
                .collect::<Vec<_>>()
        };
        let routes = |c: &Config| {
            c.routes
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect::<Vec<_>>()
        };
        let upstreams = |c: &Config| {
            c.upstreams
                .iter()
                .map(|(n, u)| (n.clone(), u.clone()))
                .collect::<Vec<_>>()
        };
        let targets = |c: &Config| {
            c.upstreams
                .iter()
                .flat_map(|(n, u)| u.targets.iter().map(move |t| (format!("{n}/{t}"), ())))
                .collect::<Vec<_>>()
        };
        let mut needs_restart = Vec::new();
        if old.workers != new.workers {
            needs_restart.push("workers".to_string());
        }
        if old.worker_model != new.worker_model {
            needs_restart.push("worker_model".to_string());
        }
        if old.admin != new.admin {
            needs_restart.push("admin".to_string());
        }
        if old.access_log != new.access_log {
            needs_restart.push("access_log".to_string());
        }
        if old.fleet != new.fleet {
            needs_restart.push("fleet".to_string());
        }
        Diff {
            listeners: Changes::of(&listeners(old), &listeners(new)),
            routes: Changes::of(&routes(old), &routes(new)),
            upstreams: Changes::of(&upstreams(old), &upstreams(new)),
            targets: Changes::of(&targets(old), &targets(new)),
            needs_restart,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
            && self.routes.is_empty()
            && self.upstreams.is_empty()
            && self.targets.is_empty()
            && self.needs_restart.is_empty()
    }
}

/// One line: `listeners +a -b ~c; routes ...; targets +app/10.0.0.5:80` (or `no changes`).
impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no changes");
        }
        let mut first = true;
        for (what, c) in [
            ("listeners", &self.listeners),
            ("routes", &self.routes),
            ("upstreams", &self.upstreams),
            ("targets", &self.targets),
        ] {
            if c.is_empty() {
                continue;
            }
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            f.write_str(what)?;
            for (sign, names) in [("+", &c.added), ("-", &c.removed), ("~", &c.changed)] {
                for n in names {
                    write!(f, " {sign}{n}")?;
                }
            }
        }
        if !self.needs_restart.is_empty() {
            if !first {
                f.write_str("; ")?;
            }
            write!(
                f,
                "needs a restart to apply: {}",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(src: &str) -> Config {
        super::super::parse(src, "t.toml").expect("valid config")
    }

    const BASE: &str = r#"
[[listener]]
name = "public"
listen = "127.0.0.1:8080"
[[route]]
name = "app"
upstream = "app"
[upstream.app]
targets = ["127.0.0.1:3001", "127.0.0.1:3002"]
"#;

    #[test]
    fn same_config_is_no_change() {
        let d = Diff::between(&config(BASE), &config(BASE));
        assert!(d.is_empty());
        assert_eq!(d.to_string(), "no changes");
    }

    #[test]
    fn targets_routes_and_listeners_are_diffed_by_identity() {
        let new = BASE.replace("\"127.0.0.1:3002\"", "\"127.0.0.1:3003\"")
            + r#"
[[listener]]
name = "internal"
listen = "127.0.0.1:8081"
[[route]]
name = "admin-api"
listener = "internal"
upstream = "app"
"#;
        let new = new.replace(
            "name = \"app\"\nupstream",
            "name = \"app\"\nlistener = \"public\"\nupstream",
        );
        let d = Diff::between(&config(BASE), &config(&new));
        assert_eq!(d.targets.added, ["app/127.0.0.1:3003"]);
        assert_eq!(d.targets.removed, ["app/127.0.0.1:3002"]);
        assert_eq!(d.upstreams.changed, ["app"]);
        assert_eq!(d.listeners.added, ["internal"]);
        assert_eq!(d.routes.added, ["admin-api"]);
        assert!(d.routes.changed.is_empty(), "{d}");
        assert_eq!(
            d.to_string(),
            "listeners +internal; routes +admin-api; upstreams ~app; \
             targets +app/127.0.0.1:3003 -app/127.0.0.1:3002"
        );
    }

    #[test]
    fn settings_read_only_at_start_are_named() {
        let new = format!("workers = 3\n{BASE}");
        let d = Diff::between(&config(BASE), &config(&new));
        assert_eq!(d.needs_restart, ["workers"]);
        assert!(d.to_string().contains("needs a restart to apply: workers"));
    }
}
