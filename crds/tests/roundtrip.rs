//! Valid specs round-trip through YAML and JSON unchanged, quantities stored
//! exactly as written, and they pass validation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::core::ObjectMeta;
use proptest::prelude::*;
use shoal_crds::*;

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop::option::of(s).boxed()
}

fn cpu() -> impl Strategy<Value = CpuQuantity> {
    prop::sample::select(vec!["500m", "0.5", "2", "1.25", "100m", "1"]).prop_map(CpuQuantity::from)
}
fn bytes() -> impl Strategy<Value = ByteQuantity> {
    prop::sample::select(vec![
        "128Mi", "1Gi", "512Mi", "128M", "1G", "300mb", "1gb", "67108864",
    ])
    .prop_map(ByteQuantity::from)
}
fn small_bytes() -> impl Strategy<Value = ByteQuantity> {
    prop::sample::select(vec!["6Mi", "16Mi", "32mb", "8M"]).prop_map(ByteQuantity::from)
}
fn dur() -> impl Strategy<Value = DurationValue> {
    prop::sample::select(vec!["1m30s", "200ms", "1h", "10s", "0s", "2s", "1.5s"])
        .prop_map(DurationValue::from)
}
fn word() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,8}"
}
fn path() -> impl Strategy<Value = String> {
    "/[a-z]{1,6}(/[a-z0-9]{1,6}){0,2}"
}

fn template() -> impl Strategy<Value = ContainerTemplate> {
    let env = prop::collection::btree_set(word().prop_map(|w| w.to_uppercase()), 0..4)
        .prop_flat_map(|names| {
            let names: Vec<String> = names.into_iter().collect();
            let n = names.len();
            prop::collection::vec(opt(".{0,12}"), n).prop_map(move |values| {
                names
                    .iter()
                    .cloned()
                    .zip(values)
                    .map(|(name, value)| EnvVar { name, value })
                    .collect::<Vec<_>>()
            })
        });
    let ports = prop::collection::btree_set(1000i32..2000, 0..3).prop_flat_map(|hps| {
        let hps: Vec<i32> = hps.into_iter().collect();
        let n = hps.len();
        (prop::collection::vec(
            (
                1i32..65536,
                any::<bool>(),
                opt(prop::sample::select(vec![Protocol::Tcp, Protocol::Udp])),
                opt(Just("127.0.0.1".to_string())),
            ),
            n,
        ),)
            .prop_map(move |(parts,)| {
                hps.iter()
                    .zip(parts)
                    .map(|(hp, (cp, publish, protocol, host_ip))| PortMapping {
                        container_port: cp,
                        host_port: publish.then_some(*hp),
                        protocol,
                        host_ip,
                    })
                    .collect::<Vec<_>>()
            })
    });
    let mounts = prop::collection::btree_set(path(), 0..3).prop_flat_map(|targets| {
        let targets: Vec<String> = targets.into_iter().collect();
        let n = targets.len();
        prop::collection::vec((0..3u8, word(), opt(any::<bool>()), small_bytes()), n).prop_map(
            move |parts| {
                targets
                    .iter()
                    .zip(parts)
                    .map(|(target, (kind, name, read_only, size))| match kind {
                        0 => Mount {
                            kind: MountType::Volume,
                            source: Some(name),
                            target: target.clone(),
                            read_only,
                            size: None,
                        },
                        1 => Mount {
                            kind: MountType::Bind,
                            source: Some(format!("/srv/{name}")),
                            target: target.clone(),
                            read_only,
                            size: None,
                        },
                        _ => Mount {
                            kind: MountType::Tmpfs,
                            source: None,
                            target: target.clone(),
                            read_only,
                            size: Some(size),
                        },
                    })
                    .collect::<Vec<_>>()
            },
        )
    });
    let resources = opt((
        opt((opt(cpu()), opt(bytes()), opt(1i64..100_000))),
        any::<bool>(),
    )
        .prop_map(|(limits, reserve)| {
            let limits = limits.map(|(cpu, memory, pids)| ResourceLimits { cpu, memory, pids });
            // Reservations at or below the limits: the smallest values.
            let reservations = reserve.then(|| ResourceReservations {
                cpu: Some(CpuQuantity::from("100m")),
                memory: Some(ByteQuantity::from("6Mi")),
            });
            Resources {
                limits,
                reservations,
            }
        }));
    let health = opt((
        prop::sample::select(vec![
            vec!["CMD".to_string(), "true".to_string()],
            vec![
                "CMD-SHELL".to_string(),
                "wget -q -O- http://127.0.0.1:8080/".to_string(),
            ],
            vec!["NONE".to_string()],
        ]),
        opt(dur().prop_filter("non-zero", |d| d.as_str() != "0s")),
        opt(dur().prop_filter("non-zero", |d| d.as_str() != "0s")),
        opt(0i32..10),
        opt(dur()),
    )
        .prop_map(
            |(command, interval, timeout, retries, start_period)| HealthCheck {
                command,
                interval,
                timeout,
                retries,
                start_period,
            },
        ));
    (
        (
            "[a-z]{1,8}(/[a-z]{1,8})?(:[0-9]{1,2})?",
            opt(prop::sample::select(vec![
                ImagePullPolicy::Always,
                ImagePullPolicy::IfNotPresent,
                ImagePullPolicy::Never,
            ])),
            opt(prop::collection::vec(".{0,8}", 0..3)),
            opt(prop::collection::vec(".{0,8}", 0..3)),
            opt(any::<bool>()),
            opt(env),
            opt(path()),
            opt(prop::sample::select(vec!["1000", "1000:1000", "nobody"]).prop_map(String::from)),
        ),
        (
            opt(ports),
            opt(mounts),
            resources,
            opt(any::<bool>()),
            opt((
                opt(prop::collection::vec(
                    prop::sample::select(vec!["NET_ADMIN".to_string(), "CAP_SYS_TIME".to_string()]),
                    0..2,
                )),
                opt(prop::collection::vec(Just("ALL".to_string()), 0..2)),
            )
                .prop_map(|(add, drop)| Capabilities { add, drop })),
            health,
            opt(dur()),
            opt(
                prop::sample::select(vec!["SIGTERM", "SIGINT", "QUIT", "15"])
                    .prop_map(String::from),
            ),
            opt(prop::collection::btree_map(
                "[a-z]{1,5}(\\.[a-z]{1,5})?",
                ".{0,6}",
                0..3,
            )),
        ),
    )
        .prop_map(
            |(
                (image, image_pull_policy, command, args, init, env, working_dir, user),
                (
                    ports,
                    mounts,
                    resources,
                    read_only_root_filesystem,
                    capabilities,
                    healthcheck,
                    stop_grace_period,
                    stop_signal,
                    labels,
                ),
            )| {
                ContainerTemplate {
                    image,
                    image_pull_policy,
                    command,
                    args,
                    init,
                    env,
                    working_dir,
                    user,
                    ports,
                    mounts,
                    resources,
                    read_only_root_filesystem,
                    capabilities,
                    healthcheck,
                    stop_grace_period,
                    stop_signal,
                    labels,
                }
            },
        )
}

fn restart_policy() -> impl Strategy<Value = RestartPolicy> {
    (
        opt(prop::sample::select(vec![
            RestartCondition::Always,
            RestartCondition::OnFailure,
            RestartCondition::Never,
        ])),
        opt(prop::sample::select(vec!["0s", "100ms", "1s"]).prop_map(DurationValue::from)),
        opt(prop::sample::select(vec!["30s", "1m", "5s"]).prop_map(DurationValue::from)),
        opt(0i32..10),
        opt(prop::sample::select(vec!["60s", "1m30s", "10s"]).prop_map(DurationValue::from)),
    )
        .prop_map(
            |(condition, delay, max_delay, max_attempts, window)| RestartPolicy {
                condition,
                delay,
                max_delay,
                max_attempts,
                window,
            },
        )
}

fn placement() -> impl Strategy<Value = Placement> {
    (
        opt((
            opt(prop::collection::btree_map(word(), word(), 0..3)),
            opt(prop::collection::vec(
                (word(), prop::sample::select(vec!["In", "NotIn", "Exists"])),
                0..2,
            )
            .prop_map(|v| {
                v.into_iter()
                    .map(|(key, op)| LabelSelectorRequirement {
                        key,
                        operator: op.to_string(),
                        values: (op != "Exists").then(|| vec!["a".to_string()]),
                    })
                    .collect::<Vec<_>>()
            })),
        )
            .prop_map(|(match_labels, match_expressions)| LabelSelector {
                match_labels,
                match_expressions,
            })),
        opt(prop::collection::btree_set(word(), 0..3)
            .prop_map(|s| s.into_iter().collect::<Vec<_>>())),
        opt(1i32..5),
    )
        .prop_map(|(host_selector, spread_by, max_per_host)| Placement {
            host_selector,
            spread_by,
            max_per_host,
        })
}

fn service() -> impl Strategy<Value = Service> {
    (
        word(),
        opt(word()),
        opt(prop::collection::btree_map(word(), word(), 0..3)),
        any::<bool>(),
        opt(0i32..50),
        template(),
        opt(restart_policy()),
        opt(placement()),
        opt((
            opt(0i32..5),
            opt(Just(UpdateOrder::StopFirst)),
            opt(Just(FailureAction::Pause)),
            opt(Just(DurationValue::from("5s"))),
        )
            .prop_map(
                |(parallelism, order, failure_action, monitor)| UpdateConfig {
                    parallelism,
                    delay: Some(DurationValue::from("0s")),
                    order,
                    failure_action,
                    monitor,
                    max_failure_ratio: Some(0.0),
                },
            )),
        opt(Just(HostLossPolicy::Reschedule)),
    )
        .prop_map(
            |(
                name,
                namespace,
                labels,
                global,
                replicas,
                template,
                restart_policy,
                placement,
                update,
                on_host_loss,
            )| {
                let spec = ServiceSpec {
                    mode: Some(if global {
                        ServiceMode::Global
                    } else {
                        ServiceMode::Replicated
                    }),
                    replicas: if global { None } else { replicas },
                    template,
                    restart_policy,
                    placement,
                    update,
                    on_host_loss,
                };
                let mut svc = Service::new(&name, spec);
                svc.metadata = ObjectMeta {
                    name: Some(name),
                    namespace,
                    labels: labels.map(|l: BTreeMap<_, _>| l),
                    ..Default::default()
                };
                svc
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn services_round_trip_through_json_and_yaml(svc in service()) {
        let json = serde_json::to_string(&svc).unwrap();
        let back: Service = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &svc);
        let yaml = serde_saphyr::to_string(&svc).unwrap();
        let back: Service = serde_saphyr::from_str(&yaml).unwrap();
        prop_assert_eq!(&back, &svc);
        // Quantities are stored exactly as written.
        if let Some(m) = svc.spec.template.resources.as_ref().and_then(|r| r.limits.as_ref()).and_then(|l| l.memory.as_ref()) {
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(v["spec"]["template"]["resources"]["limits"]["memory"].as_str(), Some(m.as_str()));
        }
        // And the generated valid specs pass validation, through the front door.
        let value = serde_json::to_value(&svc).unwrap();
        match validate(&value) {
            Ok(Validated::Service(v)) => prop_assert_eq!(*v, svc),
            other => prop_assert!(false, "{:?}\n{}", other, yaml),
        }
    }

    #[test]
    fn task_specs_round_trip(t in template(), rp in opt(restart_policy()), slot in opt(0i32..100), host in opt(word()), fence in any::<bool>()) {
        let spec = TaskSpec {
            service: "web".into(), slot, template: t, template_hash: "abc123".into(), restart_policy: rp,
            host_name: host, desired_state: Some(DesiredState::Running),
            on_host_loss: fence.then_some(shoal_crds::HostLossPolicy::Fence),
        };
        let task = Task::new("web-0", spec);
        let yaml = serde_saphyr::to_string(&task).unwrap();
        let back: Task = serde_saphyr::from_str(&yaml).unwrap();
        prop_assert_eq!(back, task);
    }
}
