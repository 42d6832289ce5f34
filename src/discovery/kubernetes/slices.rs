//! The EndpointSlice shape (only the fields gatewise reads) and the pure mapping from the
//! slices of one Service to targets, unit-tested without a socket.
//!
//! Per endpoint (`discovery.k8s.io/v1` semantics): `terminating` and `serving` → draining
//! (in-flight requests finish, no new ones); otherwise `ready` (true, or absent, which the API
//! says means true) → ready; anything else is not a target. `serving` absent means "same as
//! `ready`". Only the first address of an endpoint is used (the API calls them fungible).
//! The same address in two slices (an endpoint moving between slices) counts once, ready
//! winning over draining.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::discovery::Readiness;

/// `metadata` of an object or a list: what gatewise needs of it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub resource_version: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub address_type: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Endpoint {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: Conditions,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Conditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EndpointPort {
    /// Absent (or empty) for a Service's single unnamed port.
    #[serde(default)]
    pub name: Option<String>,
    /// Absent means "all ports", which gatewise cannot dial.
    pub port: Option<u16>,
}

/// `GET .../endpointslices`: the items and the version to watch from.
#[derive(Debug, Deserialize)]
pub struct SliceList {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub items: Vec<EndpointSlice>,
}

/// Go encodes a nil slice as `null`.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// One line of a watch stream, as gatewise acts on it.
#[derive(Debug)]
pub enum Event {
    Upsert(EndpointSlice),
    Delete(EndpointSlice),
    /// Nothing changed; the stream is at this version.
    Bookmark(String),
    /// The version watched from is too old (410): list again.
    Gone,
    /// Another error the server put in the stream.
    Error(String),
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

/// A `Status` object, as an ERROR event or an error response carries it.
#[derive(Debug, Default, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

/// Parses one newline-delimited watch event.
pub fn parse_event(line: &[u8]) -> Result<Event, String> {
    let raw: RawEvent =
        serde_json::from_slice(line).map_err(|e| format!("unreadable watch event: {e}"))?;
    let slice = |object| {
        serde_json::from_value::<EndpointSlice>(object)
            .map_err(|e| format!("unreadable EndpointSlice in a {} event: {e}", raw.kind))
    };
    match raw.kind.as_str() {
        "ADDED" | "MODIFIED" => Ok(Event::Upsert(slice(raw.object)?)),
        "DELETED" => Ok(Event::Delete(slice(raw.object)?)),
        "BOOKMARK" => Ok(Event::Bookmark(
            slice(raw.object)?.metadata.resource_version,
        )),
        "ERROR" => {
            let status: Status = serde_json::from_value(raw.object).unwrap_or_default();
            if status.code == 410 {
                Ok(Event::Gone)
            } else {
                Ok(Event::Error(format!(
                    "watch error {} {}: {}",
                    status.code, status.reason, status.message
                )))
            }
        }
        other => Err(format!("unknown watch event type {other:?}")),
    }
}

/// Which port of a slice to dial: a port name of the Service, or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    Name(String),
    Number(u16),
}

impl PortSpec {
    /// `"http"` names a port; `"8080"` is a number; `""` is a Service's one unnamed port.
    pub fn parse(s: &str) -> PortSpec {
        match s.parse::<u16>() {
            Ok(n) if n > 0 => PortSpec::Number(n),
            _ => PortSpec::Name(s.to_string()),
        }
    }

    fn of(&self, slice: &EndpointSlice) -> Option<u16> {
        match self {
            PortSpec::Number(n) => Some(*n),
            PortSpec::Name(name) => slice
                .ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == name)
                .and_then(|p| p.port),
        }
    }
}

/// What one endpoint is to gatewise, from its conditions; `None`: not a target.
pub fn readiness(c: Conditions) -> Option<Readiness> {
    let ready = c.ready.unwrap_or(true);
    if c.terminating.unwrap_or(false) {
        return c.serving.unwrap_or(ready).then_some(Readiness::Draining);
    }
    ready.then_some(Readiness::Ready)
}

/// A slice's targets: `addr` → readiness.
type Targets = BTreeMap<String, Readiness>;

/// The slices of one Service, each kept as the targets it yields.
#[derive(Debug)]
pub struct SliceSet {
    port: PortSpec,
    slices: BTreeMap<String, SliceTargets>,
}

#[derive(Debug, Default)]
struct SliceTargets {
    targets: Targets,
    /// The slice has endpoints but not the port asked for.
    port_missing: Vec<String>,
    /// Endpoints skipped because their address type cannot be dialled (FQDN).
    unsupported: Option<String>,
}

impl SliceSet {
    pub fn new(port: PortSpec) -> SliceSet {
        SliceSet {
            port,
            slices: BTreeMap::new(),
        }
    }

    /// A new full list replaces every slice.
    pub fn replace(&mut self, items: Vec<EndpointSlice>) {
        self.slices.clear();
        for slice in items {
            self.upsert(slice);
        }
    }

    pub fn upsert(&mut self, slice: EndpointSlice) {
        let targets = self.targets_of(&slice);
        self.slices.insert(slice.metadata.name, targets);
    }

    pub fn delete(&mut self, name: &str) {
        self.slices.remove(name);
    }

    /// Every target of the Service, by address.
    pub fn targets(&self) -> Targets {
        let mut all = Targets::new();
        for slice in self.slices.values() {
            for (addr, state) in &slice.targets {
                all.entry(addr.clone())
                    .and_modify(|s| {
                        if *state == Readiness::Ready {
                            *s = Readiness::Ready;
                        }
                    })
                    .or_insert(*state);
            }
        }
        all
    }

    /// Why the set is empty when it should not be: slices with endpoints but without the
    /// port asked for, or endpoints of an address type gatewise cannot dial.
    pub fn problem(&self) -> Option<String> {
        if self.slices.values().any(|s| !s.targets.is_empty()) {
            return None;
        }
        if let Some(s) = self.slices.values().find(|s| !s.port_missing.is_empty()) {
            let wanted = match &self.port {
                PortSpec::Name(n) if n.is_empty() => "no unnamed port".to_string(),
                PortSpec::Name(n) => format!("no port named {n:?}"),
                PortSpec::Number(n) => format!("no port {n}"),
            };
            return Some(format!(
                "{wanted} in the EndpointSlices (their ports: {})",
                s.port_missing.join(", ")
            ));
        }
        self.slices
            .values()
            .find_map(|s| s.unsupported.clone())
            .map(|t| {
                format!("the EndpointSlices' address type {t} is not supported (IPv4 and IPv6 are)")
            })
    }

    fn targets_of(&self, slice: &EndpointSlice) -> SliceTargets {
        let mut out = SliceTargets::default();
        if slice.endpoints.is_empty() {
            return out;
        }
        let ipv6 = match slice.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            other => {
                out.unsupported = Some(format!("{other:?}"));
                return out;
            }
        };
        let Some(port) = self.port.of(slice) else {
            out.port_missing = slice
                .ports
                .iter()
                .map(|p| match (&p.name, p.port) {
                    (Some(n), Some(num)) if !n.is_empty() => format!("{n}={num}"),
                    (_, Some(num)) => num.to_string(),
                    (_, None) => "all".to_string(),
                })
                .collect();
            if out.port_missing.is_empty() {
                out.port_missing.push("none".to_string());
            }
            return out;
        };
        for ep in &slice.endpoints {
            let (Some(ip), Some(state)) = (ep.addresses.first(), readiness(ep.conditions)) else {
                continue;
            };
            let addr = if ipv6 {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            };
            out.targets.insert(addr, state);
        }
        out
    }
}

#[cfg(test)]
#[path = "slices_tests.rs"]
mod tests;
