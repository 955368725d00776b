//! Bad input gets a clear error naming the field path and the reason. Each
//! case mutates a valid Service (DESIGN.md's example) and asserts the exact
//! path of the error and a fragment of its message.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use shoal_crds::{Validated, validate};

fn base() -> Value {
    json!({
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Service",
        "metadata": { "name": "web", "namespace": "default", "labels": { "app": "web" } },
        "spec": {
            "mode": "Replicated",
            "replicas": 3,
            "template": {
                "image": "shoal-test/busybox:1",
                "imagePullPolicy": "IfNotPresent",
                "command": ["httpd", "-f", "-p", "8080"],
                "init": true,
                "env": [{ "name": "GREETING", "value": "hello" }],
                "ports": [{ "containerPort": 8080, "hostPort": 18080, "protocol": "TCP" }],
                "mounts": [{ "type": "Volume", "source": "web-data", "target": "/data" }],
                "resources": {
                    "limits": { "cpu": "500m", "memory": "128Mi", "pids": 256 },
                    "reservations": { "cpu": "100m", "memory": "64Mi" }
                },
                "healthcheck": {
                    "command": ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"],
                    "interval": "2s", "timeout": "1s", "retries": 3, "startPeriod": "5s"
                },
                "stopGracePeriod": "10s"
            },
            "restartPolicy": { "condition": "Always", "delay": "0s", "maxDelay": "30s", "maxAttempts": 0, "window": "60s" },
            "placement": { "hostSelector": { "matchLabels": { "zone": "east" } }, "spreadBy": ["zone"], "maxPerHost": 1 },
            "update": { "parallelism": 2, "delay": "10s", "order": "StartFirst", "failureAction": "Rollback", "monitor": "30s", "maxFailureRatio": 0.2 },
            "onHostLoss": "Reschedule"
        }
    })
}

/// Sets (or with `None` removes) the value at a JSON pointer, creating
/// objects on the way and appending to arrays at index == len.
fn set(v: &mut Value, pointer: &str, new: Option<Value>) {
    let parts: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    let (last, parents) = parts.split_last().unwrap();
    let mut cur = v;
    for p in parents {
        cur = match cur {
            Value::Object(m) => m.entry(p.clone()).or_insert_with(|| json!({})),
            Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
            _ => panic!("cannot descend into {p}"),
        };
    }
    match (cur, new) {
        (Value::Object(m), Some(n)) => {
            m.insert(last.clone(), n);
        }
        (Value::Object(m), None) => {
            m.remove(last);
        }
        (Value::Array(a), Some(n)) => {
            let i: usize = last.parse().unwrap();
            if i == a.len() { a.push(n) } else { a[i] = n }
        }
        (Value::Array(a), None) => {
            a.remove(last.parse::<usize>().unwrap());
        }
        _ => panic!("bad pointer {pointer}"),
    }
}

struct Case {
    edits: Vec<(&'static str, Option<Value>)>,
    path: &'static str,
    message: &'static str,
}

fn case(
    edits: Vec<(&'static str, Option<Value>)>,
    path: &'static str,
    message: &'static str,
) -> Case {
    Case {
        edits,
        path,
        message,
    }
}

fn put(p: &'static str, v: Value) -> (&'static str, Option<Value>) {
    (p, Some(v))
}

fn del(p: &'static str) -> (&'static str, Option<Value>) {
    (p, None)
}

fn cases() -> Vec<Case> {
    const T: &str = "spec.template";
    let _ = T;
    vec![
        case(
            vec![put("/apiVersion", json!("apps/v1"))],
            "apiVersion",
            "is not served",
        ),
        case(vec![del("/apiVersion")], "apiVersion", "required"),
        case(
            vec![put("/kind", json!("Deployment"))],
            "kind",
            "is not a kind of shoal.dev/v1alpha1",
        ),
        case(vec![del("/metadata/name")], "metadata.name", "required"),
        case(
            vec![put("/metadata/name", json!("Web"))],
            "metadata.name",
            "lowercase letters",
        ),
        case(
            vec![put("/metadata/name", json!("a".repeat(64)))],
            "metadata.name",
            "longer than 63",
        ),
        case(
            vec![put("/metadata/namespace", json!("my_ns"))],
            "metadata.namespace",
            "DNS-1123",
        ),
        case(
            vec![put("/metadata/labels/bad key!", json!("x"))],
            "metadata.labels[\"bad key!\"]",
            "label key",
        ),
        case(
            vec![put("/metadata/labels/app", json!("bad value!"))],
            "metadata.labels.app",
            "label value",
        ),
        case(
            vec![put("/spec/replicas", json!(-1))],
            "spec.replicas",
            "negative",
        ),
        case(
            vec![put("/spec/replicas", json!("3"))],
            "spec.replicas",
            "invalid type",
        ),
        case(
            vec![put("/spec/replicas", json!(1_000_000))],
            "spec.replicas",
            "maximum",
        ),
        case(
            vec![put("/spec/mode", json!("Global"))],
            "spec.replicas",
            "Global mode",
        ),
        case(
            vec![put("/spec/mode", json!("Sometimes"))],
            "spec.mode",
            "unknown variant `Sometimes`",
        ),
        case(
            vec![put("/spec/template/image", json!(""))],
            "spec.template.image",
            "required",
        ),
        case(
            vec![del("/spec/template/image")],
            "spec.template.image",
            "required",
        ),
        case(
            vec![put("/spec/template/image", json!("Shoal/Busybox:1"))],
            "spec.template.image",
            "lowercase",
        ),
        case(
            vec![put("/spec/template/image", json!("busy box"))],
            "spec.template.image",
            "spaces",
        ),
        case(
            vec![put("/spec/template/imagePullPolicy", json!("Sometimes"))],
            "spec.template.imagePullPolicy",
            "unknown variant",
        ),
        case(
            vec![put("/spec/template/env/1", json!({"name": "GREETING"}))],
            "spec.template.env[1].name",
            "already set by env[0]",
        ),
        case(
            vec![put("/spec/template/env/0/name", json!("A=B"))],
            "spec.template.env[0].name",
            "must not contain '='",
        ),
        case(
            vec![put("/spec/template/env/0/name", json!(""))],
            "spec.template.env[0].name",
            "required",
        ),
        case(
            vec![put("/spec/template/ports/0/containerPort", json!(0))],
            "spec.template.ports[0].containerPort",
            "not a port",
        ),
        case(
            vec![put(
                "/spec/template/ports/1",
                json!({"containerPort": 9090, "hostPort": 18080}),
            )],
            "spec.template.ports[1].hostPort",
            "18080/TCP is already published by ports[0]",
        ),
        case(
            vec![put("/spec/template/ports/0/hostPort", json!(70000))],
            "spec.template.ports[0].hostPort",
            "not a port",
        ),
        case(
            vec![put("/spec/template/ports/0/protocol", json!("SCTP"))],
            "spec.template.ports[0].protocol",
            "unknown variant `SCTP`",
        ),
        case(
            vec![put("/spec/template/ports/0/hostIP", json!("1.2.3"))],
            "spec.template.ports[0].hostIP",
            "not an IP address",
        ),
        case(
            vec![put("/spec/template/mounts/0/target", json!("data"))],
            "spec.template.mounts[0].target",
            "absolute path",
        ),
        case(
            vec![put(
                "/spec/template/mounts/1",
                json!({"type": "Tmpfs", "target": "/data"}),
            )],
            "spec.template.mounts[1].target",
            "already mounted by mounts[0]",
        ),
        case(
            vec![put(
                "/spec/template/mounts/1",
                json!({"type": "Bind", "source": "relative", "target": "/x"}),
            )],
            "spec.template.mounts[1].source",
            "absolute host path",
        ),
        case(
            vec![put(
                "/spec/template/mounts/1",
                json!({"type": "Tmpfs", "source": "x", "target": "/x"}),
            )],
            "spec.template.mounts[1].source",
            "must be empty",
        ),
        case(
            vec![put("/spec/template/mounts/0/size", json!("1Gi"))],
            "spec.template.mounts[0].size",
            "only a Tmpfs",
        ),
        case(
            vec![put("/spec/template/mounts/0/type", json!("Nfs"))],
            "spec.template.mounts[0].type",
            "unknown variant `Nfs`",
        ),
        case(
            vec![put("/spec/template/mounts/0/source", json!("bad/name"))],
            "spec.template.mounts[0].source",
            "not a volume name",
        ),
        case(
            vec![put("/spec/template/resources/limits/memory", json!("12XB"))],
            "spec.template.resources.limits.memory",
            "\"12XB\" is not a byte quantity (examples: 128Mi, 1G)",
        ),
        case(
            vec![put("/spec/template/resources/limits/memory", json!("300m"))],
            "spec.template.resources.limits.memory",
            "write 300Mi",
        ),
        case(
            vec![put("/spec/template/resources/limits/memory", json!("4Mi"))],
            "spec.template.resources.limits.memory",
            "minimum of 6Mi",
        ),
        case(
            vec![put("/spec/template/resources/limits/memory", json!("0.5"))],
            "spec.template.resources.limits.memory",
            "fraction of a byte",
        ),
        case(
            vec![put("/spec/template/resources/limits/cpu", json!("0"))],
            "spec.template.resources.limits.cpu",
            "must be more than 0",
        ),
        case(
            vec![put("/spec/template/resources/limits/cpu", json!("-1"))],
            "spec.template.resources.limits.cpu",
            "negative",
        ),
        case(
            vec![put("/spec/template/resources/limits/cpu", json!("0.0001"))],
            "spec.template.resources.limits.cpu",
            "more than 3 decimals",
        ),
        case(
            vec![put("/spec/template/resources/limits/cpu", json!(0.5))],
            "spec.template.resources.limits.cpu",
            "must be a quoted string",
        ),
        case(
            vec![put("/spec/template/resources/limits/pids", json!(0))],
            "spec.template.resources.limits.pids",
            "at least 1",
        ),
        case(
            vec![put("/spec/template/resources/reservations/cpu", json!("1"))],
            "spec.template.resources.reservations.cpu",
            "more than the cpu limit",
        ),
        case(
            vec![put(
                "/spec/template/resources/reservations/memory",
                json!("256Mi"),
            )],
            "spec.template.resources.reservations.memory",
            "more than the memory limit",
        ),
        case(
            vec![put(
                "/spec/template/healthcheck/command",
                json!(["RUN", "x"]),
            )],
            "spec.template.healthcheck.command[0]",
            "must be CMD, CMD-SHELL or NONE",
        ),
        case(
            vec![put("/spec/template/healthcheck/command", json!([]))],
            "spec.template.healthcheck.command",
            "required",
        ),
        case(
            vec![put(
                "/spec/template/healthcheck/command",
                json!(["CMD-SHELL", "a", "b"]),
            )],
            "spec.template.healthcheck.command",
            "exactly one shell command",
        ),
        case(
            vec![put("/spec/template/healthcheck/interval", json!("2"))],
            "spec.template.healthcheck.interval",
            "has no unit",
        ),
        case(
            vec![put("/spec/template/healthcheck/timeout", json!("0s"))],
            "spec.template.healthcheck.timeout",
            "at least 1ms",
        ),
        case(
            vec![put("/spec/template/healthcheck/retries", json!(-1))],
            "spec.template.healthcheck.retries",
            "negative",
        ),
        case(
            vec![put("/spec/template/stopGracePeriod", json!("10 s"))],
            "spec.template.stopGracePeriod",
            "spaces",
        ),
        case(
            vec![put("/spec/template/stopGracePeriod", json!("10d"))],
            "spec.template.stopGracePeriod",
            "unknown unit \"d\"",
        ),
        case(
            vec![put("/spec/template/stopSignal", json!("SIGFOO"))],
            "spec.template.stopSignal",
            "not a signal",
        ),
        case(
            vec![put("/spec/template/workingDir", json!("app"))],
            "spec.template.workingDir",
            "absolute path",
        ),
        case(
            vec![put("/spec/template/user", json!("a b"))],
            "spec.template.user",
            "not a user",
        ),
        case(
            vec![put(
                "/spec/template/capabilities",
                json!({"add": ["NET_ADMINZ"]}),
            )],
            "spec.template.capabilities.add[0]",
            "not a Linux capability",
        ),
        case(
            vec![put(
                "/spec/template/labels",
                json!({"shoal.dev/service": "x"}),
            )],
            "spec.template.labels[\"shoal.dev/service\"]",
            "reserved",
        ),
        case(
            vec![put("/spec/restartPolicy/condition", json!("Sometimes"))],
            "spec.restartPolicy.condition",
            "unknown variant",
        ),
        case(
            vec![put("/spec/restartPolicy/delay", json!("1m"))],
            "spec.restartPolicy.delay",
            "more than maxDelay",
        ),
        case(
            vec![put("/spec/restartPolicy/maxAttempts", json!(-1))],
            "spec.restartPolicy.maxAttempts",
            "negative",
        ),
        case(
            vec![put("/spec/restartPolicy/window", json!("0s"))],
            "spec.restartPolicy.window",
            "more than 0s",
        ),
        case(
            vec![put(
                "/spec/placement/hostSelector/matchExpressions",
                json!([{"key": "zone", "operator": "Near", "values": ["x"]}]),
            )],
            "spec.placement.hostSelector.matchExpressions[0].operator",
            "not an operator",
        ),
        case(
            vec![put(
                "/spec/placement/hostSelector/matchExpressions",
                json!([{"key": "zone", "operator": "In"}]),
            )],
            "spec.placement.hostSelector.matchExpressions[0].values",
            "must not be empty",
        ),
        case(
            vec![put(
                "/spec/placement/hostSelector/matchLabels/zone",
                json!("east west"),
            )],
            "spec.placement.hostSelector.matchLabels[\"zone\"]",
            "label value",
        ),
        case(
            vec![put("/spec/placement/spreadBy", json!(["zone", "zone"]))],
            "spec.placement.spreadBy[1]",
            "listed twice",
        ),
        case(
            vec![put("/spec/placement/maxPerHost", json!(0))],
            "spec.placement.maxPerHost",
            "at least 1",
        ),
        case(
            vec![put("/spec/update/order", json!("Sideways"))],
            "spec.update.order",
            "unknown variant",
        ),
        case(
            vec![put("/spec/update/failureAction", json!("Retry"))],
            "spec.update.failureAction",
            "unknown variant",
        ),
        case(
            vec![put("/spec/update/delay", json!("5 s"))],
            "spec.update.delay",
            "spaces",
        ),
        case(
            vec![put("/spec/update/monitor", json!("10d"))],
            "spec.update.monitor",
            "unknown unit \"d\"",
        ),
        case(
            vec![put("/spec/update/maxFailureRatio", json!(2))],
            "spec.update.maxFailureRatio",
            "between 0 and 1",
        ),
        case(
            vec![put("/spec/update/parallelism", json!(-1))],
            "spec.update.parallelism",
            "negative",
        ),
        case(
            vec![put("/spec/template/foo", json!(1))],
            "spec.template.foo",
            "unknown field",
        ),
        case(
            vec![put("/spec/template/ports/0/hostport", json!(1))],
            "spec.template.ports[0].hostport",
            "unknown field",
        ),
        case(
            vec![put("/spec/bogus", json!(true))],
            "spec.bogus",
            "unknown field",
        ),
        case(vec![del("/spec/template")], "spec.template", "required"),
    ]
}

#[test]
fn the_design_example_is_valid() {
    match validate(&base()) {
        Ok(Validated::Service(s)) => assert_eq!(s.spec.replicas, Some(3)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_bad_input_names_its_field_and_reason() {
    let cases = cases();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let mut v = base();
        for (p, new) in &c.edits {
            set(&mut v, p, new.clone());
        }
        match validate(&v) {
            Ok(_) => failures.push(format!("case {i} ({}): accepted", c.path)),
            Err(errs) => {
                let hit = errs
                    .0
                    .iter()
                    .any(|e| e.path == c.path && e.message.contains(c.message));
                if !hit {
                    failures.push(format!(
                        "case {i}: want {}: …{}…, got:\n{errs}",
                        c.path, c.message
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn host_port_zero_asks_the_engine_for_a_port_and_never_clashes() {
    let mut v = base();
    set(&mut v, "/spec/template/ports/0/hostPort", Some(json!(0)));
    set(
        &mut v,
        "/spec/template/ports/1",
        Some(json!({"containerPort": 9090, "hostPort": 0})),
    );
    assert!(validate(&v).is_ok(), "{:?}", validate(&v));
    set(&mut v, "/spec/template/ports/1/hostPort", Some(json!(-1)));
    assert_eq!(
        validate(&v).unwrap_err().paths(),
        ["spec.template.ports[1].hostPort"]
    );
}

#[test]
fn the_error_line_reads_path_colon_reason() {
    let mut v = base();
    set(
        &mut v,
        "/spec/template/resources/limits/memory",
        Some(json!("12XB")),
    );
    let e = validate(&v).unwrap_err();
    assert_eq!(
        e.to_string(),
        "spec.template.resources.limits.memory: \"12XB\" is not a byte quantity (examples: 128Mi, 1G)"
    );
}

#[test]
fn several_problems_are_reported_together() {
    let mut v = base();
    set(&mut v, "/spec/replicas", Some(json!(-2)));
    set(
        &mut v,
        "/spec/template/ports/0/containerPort",
        Some(json!(0)),
    );
    set(&mut v, "/spec/update", Some(json!({"monitor": "soon"})));
    let e = validate(&v).unwrap_err();
    assert_eq!(
        e.paths(),
        [
            "spec.replicas",
            "spec.template.ports[0].containerPort",
            "spec.update.monitor"
        ]
    );
}

#[test]
fn the_examples_directory_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let v: Value = serde_saphyr::from_str(&text).unwrap();
            if let Err(e) = validate(&v) {
                panic!("{}: {e}", path.display());
            }
            n += 1;
        }
    }
    assert!(n >= 2, "expected the examples, found {n}");
}

#[test]
fn tasks_and_hosts_are_validated_too() {
    let task = json!({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "Task",
        "metadata": { "name": "web-0-abc", "namespace": "default" },
        "spec": { "service": "web", "slot": -1, "templateHash": "", "template": { "image": "x" } }
    });
    let e = validate(&task).unwrap_err();
    assert_eq!(e.paths(), ["spec.slot", "spec.templateHash"]);
    let host = json!({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "Host",
        "metadata": { "name": "node-1.example", "namespace": "default" },
        "spec": { "availability": "Drained" }
    });
    let e = validate(&host).unwrap_err();
    assert_eq!(e.paths(), ["spec.availability"]);
    let host = json!({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "Host",
        "metadata": { "name": "node-1.example", "namespace": "default" },
        "spec": { "availability": "Drain" }
    });
    assert_eq!(validate(&host).unwrap_err().paths(), ["metadata.namespace"]);
}
