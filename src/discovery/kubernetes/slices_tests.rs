use serde_json::json;

use super::*;

fn slice(name: &str, endpoints: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "7",
                     "labels": {"kubernetes.io/service-name": "app"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "metrics", "port": 9090, "protocol": "TCP"}]
    }))
    .unwrap()
}

fn ep(
    ip: &str,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
) -> serde_json::Value {
    let mut c = serde_json::Map::new();
    for (k, v) in [
        ("ready", ready),
        ("serving", serving),
        ("terminating", terminating),
    ] {
        if let Some(v) = v {
            c.insert(k.into(), v.into());
        }
    }
    json!({"addresses": [ip], "conditions": c, "nodeName": "node-1",
           "targetRef": {"kind": "Pod", "name": format!("app-{ip}"), "namespace": "default"}})
}

fn set_of(s: &SliceSet) -> Vec<(String, Readiness)> {
    s.targets().into_iter().collect()
}

#[test]
fn conditions_map_to_ready_draining_or_gone() {
    use Readiness::*;
    let cases = [
        // (ready, serving, terminating) → state
        ((Some(true), Some(true), Some(false)), Some(Ready)),
        ((None, None, None), Some(Ready)), // absent ready means ready
        ((Some(false), Some(false), Some(false)), None), // starting, not ready yet
        ((Some(false), Some(true), Some(true)), Some(Draining)), // terminating, still serving
        ((Some(false), Some(false), Some(true)), None), // terminating, no longer serving
        ((Some(false), None, Some(true)), None), // serving absent = ready (false)
        ((Some(true), None, Some(true)), Some(Draining)), // publishNotReadyAddresses
    ];
    for ((ready, serving, terminating), want) in cases {
        let got = readiness(Conditions {
            ready,
            serving,
            terminating,
        });
        assert_eq!(
            got, want,
            "ready={ready:?} serving={serving:?} terminating={terminating:?}"
        );
    }
}

#[test]
fn named_port_picks_the_port_and_missing_port_is_a_problem() {
    let mut s = SliceSet::new(PortSpec::parse("metrics"));
    s.upsert(slice(
        "app-a",
        json!([ep("10.0.0.1", Some(true), None, None)]),
    ));
    assert_eq!(
        set_of(&s),
        vec![("10.0.0.1:9090".to_string(), Readiness::Ready)]
    );
    assert_eq!(s.problem(), None);

    let mut s = SliceSet::new(PortSpec::parse("grpc"));
    s.upsert(slice(
        "app-a",
        json!([ep("10.0.0.1", Some(true), None, None)]),
    ));
    assert!(s.targets().is_empty());
    let problem = s.problem().expect("a missing port is reported");
    assert!(problem.contains("no port named \"grpc\""), "{problem}");
    assert!(problem.contains("http=8080, metrics=9090"), "{problem}");

    let mut s = SliceSet::new(PortSpec::parse("7000"));
    s.upsert(slice("app-a", json!([ep("10.0.0.1", None, None, None)])));
    assert_eq!(
        set_of(&s),
        vec![("10.0.0.1:7000".to_string(), Readiness::Ready)]
    );
}

#[test]
fn rolling_update_events_move_targets_through_draining_to_gone() {
    let mut s = SliceSet::new(PortSpec::parse("http"));
    s.replace(vec![slice(
        "app-a",
        json!([
            ep("10.0.0.1", Some(true), Some(true), Some(false)),
            ep("10.0.0.2", Some(true), Some(true), Some(false))
        ]),
    )]);
    // A new pod appears (not ready yet), an old one starts terminating.
    s.upsert(slice(
        "app-a",
        json!([
            ep("10.0.0.1", Some(false), Some(true), Some(true)),
            ep("10.0.0.2", Some(true), Some(true), Some(false)),
            ep("10.0.0.3", Some(false), Some(false), Some(false))
        ]),
    ));
    assert_eq!(
        set_of(&s),
        vec![
            ("10.0.0.1:8080".to_string(), Readiness::Draining),
            ("10.0.0.2:8080".to_string(), Readiness::Ready),
        ]
    );
    // The new pod is ready, the old one gone.
    s.upsert(slice(
        "app-a",
        json!([
            ep("10.0.0.2", Some(true), Some(true), Some(false)),
            ep("10.0.0.3", Some(true), Some(true), Some(false))
        ]),
    ));
    assert_eq!(
        set_of(&s),
        vec![
            ("10.0.0.2:8080".to_string(), Readiness::Ready),
            ("10.0.0.3:8080".to_string(), Readiness::Ready),
        ]
    );
    s.delete("app-a");
    assert!(s.targets().is_empty());
    assert_eq!(
        s.problem(),
        None,
        "no slices is an empty service, not a problem"
    );
}

#[test]
fn an_address_in_two_slices_counts_once_ready_winning() {
    let mut s = SliceSet::new(PortSpec::parse("http"));
    s.upsert(slice(
        "app-a",
        json!([ep("10.0.0.1", Some(false), Some(true), Some(true))]),
    ));
    s.upsert(slice(
        "app-b",
        json!([ep("10.0.0.1", Some(true), None, None)]),
    ));
    assert_eq!(
        set_of(&s),
        vec![("10.0.0.1:8080".to_string(), Readiness::Ready)]
    );
    s.delete("app-b");
    assert_eq!(
        set_of(&s),
        vec![("10.0.0.1:8080".to_string(), Readiness::Draining)]
    );
}

#[test]
fn relist_with_the_same_slices_yields_the_same_set() {
    let items = || {
        vec![
            slice("app-a", json!([ep("10.0.0.1", Some(true), None, None)])),
            slice(
                "app-b",
                json!([ep("10.0.0.2", Some(false), Some(true), Some(true))]),
            ),
        ]
    };
    let mut s = SliceSet::new(PortSpec::parse("http"));
    s.replace(items());
    let before = s.targets();
    s.replace(items());
    assert_eq!(s.targets(), before);
}

#[test]
fn ipv6_null_fields_and_fqdn() {
    let v6: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "v6"}, "addressType": "IPv6",
        "endpoints": [{"addresses": ["fd00::1"], "conditions": {}}],
        "ports": [{"name": "http", "port": 80}]
    }))
    .unwrap();
    let empty: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "none"}, "addressType": "IPv4", "endpoints": null, "ports": null
    }))
    .unwrap();
    let mut s = SliceSet::new(PortSpec::parse("http"));
    s.upsert(v6);
    s.upsert(empty);
    assert_eq!(
        set_of(&s),
        vec![("[fd00::1]:80".to_string(), Readiness::Ready)]
    );

    let fqdn: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "ext"}, "addressType": "FQDN",
        "endpoints": [{"addresses": ["db.example.com"]}], "ports": [{"name": "http", "port": 80}]
    }))
    .unwrap();
    let mut s = SliceSet::new(PortSpec::parse("http"));
    s.upsert(fqdn);
    assert!(s.targets().is_empty());
    assert!(s.problem().unwrap().contains("\"FQDN\" is not supported"));
}

#[test]
fn watch_events_parse_in_the_api_shape() {
    let added = br#"{"type":"ADDED","object":{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"app-x","resourceVersion":"12"},"addressType":"IPv4","endpoints":[{"addresses":["10.0.0.9"],"conditions":{"ready":true}}],"ports":[{"name":"http","port":80,"protocol":"TCP"}]}}"#;
    match parse_event(added).unwrap() {
        Event::Upsert(s) => assert_eq!(s.metadata.resource_version, "12"),
        other => panic!("{other:?}"),
    }
    let bookmark = br#"{"type":"BOOKMARK","object":{"kind":"EndpointSlice","apiVersion":"discovery.k8s.io/v1","metadata":{"resourceVersion":"15","annotations":{"k8s.io/initial-events-end":"true"}}}}"#;
    assert!(matches!(parse_event(bookmark).unwrap(), Event::Bookmark(v) if v == "15"));
    let gone = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 5 (15)","reason":"Expired","code":410}}"#;
    assert!(matches!(parse_event(gone).unwrap(), Event::Gone));
    let other = br#"{"type":"ERROR","object":{"kind":"Status","status":"Failure","message":"boom","reason":"InternalError","code":500}}"#;
    assert!(matches!(parse_event(other).unwrap(), Event::Error(m) if m.contains("boom")));
    assert!(parse_event(b"{not json").is_err());
    assert!(parse_event(br#"{"type":"WHAT","object":{}}"#).is_err());
}
