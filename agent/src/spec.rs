//! From a task's frozen container template to the engine's create request.
//! Pure; every field of the template takes effect, and only fields the
//! engine's API 1.41 knows are set.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, Mount as EngineMount,
    MountTmpfsOptions, MountType as EngineMountType, NetworkingConfig, PortBinding,
    RestartPolicy as EngineRestartPolicy, RestartPolicyNameEnum,
};
use shoal_crds::{ContainerTemplate, MountType, Protocol};

use crate::labels::{TaskIdentity, network_name};

/// Default stop grace period (DESIGN.md defaults).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// A template value the agent cannot turn into a request (validation should
/// have refused it; the task becomes `Rejected`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The template field.
    pub field: String,
    /// Why.
    pub message: String,
}

fn bad(field: &str, e: impl std::fmt::Display) -> SpecError {
    SpecError {
        field: field.to_string(),
        message: e.to_string(),
    }
}

/// Whole seconds of the stop grace period, fractions rounded up.
pub fn stop_grace_secs(t: &ContainerTemplate) -> Result<i64, SpecError> {
    let d = match &t.stop_grace_period {
        Some(v) => v.parse().map_err(|e| bad("stopGracePeriod", e))?,
        None => DEFAULT_STOP_GRACE,
    };
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(secs).map_err(|_| bad("stopGracePeriod", "too long"))
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The create request for the container of task `id` running `t`.
pub fn create_body(
    id: &TaskIdentity<'_>,
    t: &ContainerTemplate,
) -> Result<ContainerCreateBody, SpecError> {
    let mut labels: HashMap<String, String> = t
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("shoal.dev/"))
        .collect();
    labels.extend(id.labels());

    let env = t.env.as_ref().map(|env| {
        env.iter()
            .map(|e| format!("{}={}", e.name, e.value.as_deref().unwrap_or_default()))
            .collect::<Vec<_>>()
    });

    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in t.ports.iter().flatten() {
        let proto = match p.protocol.unwrap_or_default() {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let key = format!("{}/{proto}", p.container_port);
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        if let Some(hp) = p.host_port {
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: p.host_ip.clone(),
                    host_port: Some(hp.to_string()),
                });
        }
    }

    let mut mounts = Vec::new();
    for (i, m) in t.mounts.iter().flatten().enumerate() {
        let typ = match m.kind {
            MountType::Bind => EngineMountType::BIND,
            MountType::Volume => EngineMountType::VOLUME,
            MountType::Tmpfs => EngineMountType::TMPFS,
        };
        // A tmpfs is world-writable with the sticky bit, like /tmp, so a
        // non-root user can write to it.
        let tmpfs_options = match &m.kind {
            MountType::Tmpfs => {
                let size_bytes = match &m.size {
                    Some(size) => {
                        let at = format!("mounts[{i}].size");
                        let b = size.parse().map_err(|e| bad(&at, e))?;
                        Some(i64::try_from(b).map_err(|_| bad(&at, "too large"))?)
                    }
                    None => None,
                };
                Some(MountTmpfsOptions {
                    size_bytes,
                    mode: Some(0o1777),
                    ..Default::default()
                })
            }
            _ => None,
        };
        mounts.push(EngineMount {
            target: Some(m.target.clone()),
            source: m.source.clone().filter(|_| m.kind != MountType::Tmpfs),
            typ: Some(typ),
            read_only: m.read_only,
            tmpfs_options,
            ..Default::default()
        });
    }

    let mut host = HostConfig {
        init: t.init,
        restart_policy: Some(EngineRestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        network_mode: Some(network_name(id.namespace)),
        readonly_rootfs: t.read_only_root_filesystem,
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        mounts: (!mounts.is_empty()).then_some(mounts),
        ..Default::default()
    };
    if let Some(caps) = &t.capabilities {
        host.cap_add = caps.add.clone();
        host.cap_drop = caps.drop.clone();
    }
    if let Some(res) = &t.resources {
        if let Some(l) = &res.limits {
            if let Some(cpu) = &l.cpu {
                let milli = cpu.parse().map_err(|e| bad("resources.limits.cpu", e))?;
                host.nano_cpus =
                    Some(i64::try_from(milli.saturating_mul(1_000_000)).unwrap_or(i64::MAX));
            }
            if let Some(mem) = &l.memory {
                let b = mem.parse().map_err(|e| bad("resources.limits.memory", e))?;
                let b =
                    i64::try_from(b).map_err(|_| bad("resources.limits.memory", "too large"))?;
                host.memory = Some(b);
                // Swap limited to the same value: no swap escape.
                host.memory_swap = Some(b);
            }
            host.pids_limit = l.pids;
        }
        if let Some(r) = &res.reservations
            && let Some(mem) = &r.memory
        {
            let b = mem
                .parse()
                .map_err(|e| bad("resources.reservations.memory", e))?;
            host.memory_reservation = Some(
                i64::try_from(b).map_err(|_| bad("resources.reservations.memory", "too large"))?,
            );
        }
    }

    let healthcheck = match &t.healthcheck {
        None => None,
        Some(h) => {
            let dur = |v: &Option<shoal_crds::DurationValue>,
                       f: &str|
             -> Result<Option<i64>, SpecError> {
                v.as_ref()
                    .map(|d| d.parse().map(nanos).map_err(|e| bad(f, e)))
                    .transpose()
            };
            Some(HealthConfig {
                test: Some(h.command.clone()),
                interval: dur(&h.interval, "healthcheck.interval")?,
                timeout: dur(&h.timeout, "healthcheck.timeout")?,
                retries: h.retries.map(i64::from),
                start_period: dur(&h.start_period, "healthcheck.startPeriod")?,
                // start_interval is API 1.44: never sent.
                start_interval: None,
            })
        }
    };

    let network = network_name(id.namespace);
    let endpoint = EndpointSettings {
        aliases: Some(vec![id.service.to_string()]),
        ..Default::default()
    };

    Ok(ContainerCreateBody {
        image: Some(t.image.clone()),
        entrypoint: t.command.clone(),
        cmd: t.args.clone(),
        env,
        working_dir: t.working_dir.clone(),
        user: t.user.clone(),
        labels: Some(labels),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        stop_signal: t.stop_signal.clone(),
        stop_timeout: Some(stop_grace_secs(t)?),
        healthcheck,
        host_config: Some(host),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(network, endpoint)])),
        }),
        ..Default::default()
    })
}

/// Labels of the namespace network.
pub fn network_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(crate::labels::CLUSTER.to_string(), cluster.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crds::{
        ByteQuantity, Capabilities, CpuQuantity, DurationValue, EnvVar, HealthCheck, Mount,
        PortMapping, ResourceLimits, ResourceReservations, Resources,
    };

    fn id() -> TaskIdentity<'static> {
        TaskIdentity {
            cluster: "c",
            namespace: "ns",
            service: "web",
            slot: Some(0),
            uid: "u-1",
            template_hash: "h",
        }
    }

    fn full() -> ContainerTemplate {
        ContainerTemplate {
            image: "img:1".into(),
            command: Some(vec!["httpd".into()]),
            args: Some(vec!["-f".into()]),
            init: Some(true),
            env: Some(vec![
                EnvVar {
                    name: "A".into(),
                    value: Some("1".into()),
                },
                EnvVar {
                    name: "B".into(),
                    value: None,
                },
            ]),
            working_dir: Some("/www".into()),
            user: Some("65534".into()),
            ports: Some(vec![PortMapping {
                container_port: 8080,
                host_port: Some(18080),
                protocol: None,
                host_ip: Some("127.0.0.1".into()),
            }]),
            mounts: Some(vec![
                Mount {
                    kind: MountType::Volume,
                    source: Some("data".into()),
                    target: "/data".into(),
                    read_only: None,
                    size: None,
                },
                Mount {
                    kind: MountType::Bind,
                    source: Some("/tmp".into()),
                    target: "/host".into(),
                    read_only: Some(true),
                    size: None,
                },
                Mount {
                    kind: MountType::Tmpfs,
                    source: None,
                    target: "/scratch".into(),
                    read_only: None,
                    size: Some(ByteQuantity::new("1Mi")),
                },
            ]),
            resources: Some(Resources {
                limits: Some(ResourceLimits {
                    cpu: Some(CpuQuantity::new("500m")),
                    memory: Some(ByteQuantity::new("64Mi")),
                    pids: Some(100),
                }),
                reservations: Some(ResourceReservations {
                    cpu: None,
                    memory: Some(ByteQuantity::new("32Mi")),
                }),
            }),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            healthcheck: Some(HealthCheck {
                command: vec!["CMD".into(), "true".into()],
                interval: Some(DurationValue::new("2s")),
                timeout: Some(DurationValue::new("1s")),
                retries: Some(3),
                start_period: Some(DurationValue::new("500ms")),
            }),
            stop_grace_period: Some(DurationValue::new("1500ms")),
            stop_signal: Some("SIGINT".into()),
            labels: Some(BTreeMap::from([
                ("app".into(), "web".into()),
                ("shoal.dev/cluster".into(), "spoofed".into()),
            ])),
            ..Default::default()
        }
    }

    #[test]
    fn every_field_reaches_the_request() {
        let b = create_body(&id(), &full()).unwrap();
        assert_eq!(b.image.as_deref(), Some("img:1"));
        assert_eq!(b.entrypoint, Some(vec!["httpd".to_string()]));
        assert_eq!(b.cmd, Some(vec!["-f".to_string()]));
        assert_eq!(b.env, Some(vec!["A=1".to_string(), "B=".to_string()]));
        assert_eq!(b.working_dir.as_deref(), Some("/www"));
        assert_eq!(b.user.as_deref(), Some("65534"));
        assert_eq!(b.stop_timeout, Some(2), "1.5s rounds up to whole seconds");
        assert_eq!(b.stop_signal.as_deref(), Some("SIGINT"));
        let labels = b.labels.unwrap();
        assert_eq!(labels["app"], "web");
        assert_eq!(
            labels["shoal.dev/cluster"], "c",
            "reserved keys cannot be spoofed"
        );
        assert_eq!(labels["shoal.dev/task-uid"], "u-1");
        assert_eq!(b.exposed_ports, Some(vec!["8080/tcp".to_string()]));
        let h = b.host_config.unwrap();
        assert_eq!(h.init, Some(true));
        assert_eq!(
            h.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::NO)
        );
        assert_eq!(h.network_mode.as_deref(), Some("shoal-ns"));
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.memory_swap, Some(64 << 20));
        assert_eq!(h.memory_reservation, Some(32 << 20));
        assert_eq!(h.pids_limit, Some(100));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.cap_add, Some(vec!["NET_ADMIN".to_string()]));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
        let pb = h.port_bindings.unwrap();
        let binding = pb["8080/tcp"].as_ref().unwrap();
        assert_eq!(binding[0].host_port.as_deref(), Some("18080"));
        assert_eq!(binding[0].host_ip.as_deref(), Some("127.0.0.1"));
        let m = h.mounts.unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].typ, Some(EngineMountType::VOLUME));
        assert_eq!(m[1].read_only, Some(true));
        assert_eq!(m[2].typ, Some(EngineMountType::TMPFS));
        assert_eq!(m[2].source, None);
        assert_eq!(
            m[2].tmpfs_options.as_ref().unwrap().size_bytes,
            Some(1 << 20)
        );
        let hc = b.healthcheck.unwrap();
        assert_eq!(hc.interval, Some(2_000_000_000));
        assert_eq!(hc.start_period, Some(500_000_000));
        assert_eq!(hc.retries, Some(3));
        assert_eq!(hc.start_interval, None);
        let ep = &b.networking_config.unwrap().endpoints_config.unwrap()["shoal-ns"];
        assert_eq!(ep.aliases, Some(vec!["web".to_string()]));
    }

    #[test]
    fn no_field_newer_than_api_1_41_is_sent() {
        let json = serde_json::to_value(create_body(&id(), &full()).unwrap()).unwrap();
        let text = json.to_string();
        for newer in [
            "StartInterval",
            "MacAddress",
            "GwPriority",
            "DriverOpts",
            "Annotations",
            "ConsoleSize",
        ] {
            assert!(!text.contains(newer), "{newer} in {text}");
        }
    }

    #[test]
    fn defaults() {
        let t = ContainerTemplate {
            image: "img".into(),
            ..Default::default()
        };
        let b = create_body(&id(), &t).unwrap();
        assert_eq!(b.stop_timeout, Some(10));
        assert_eq!(b.entrypoint, None);
        assert_eq!(b.healthcheck, None);
        let h = b.host_config.unwrap();
        assert_eq!(h.memory, None);
        assert_eq!(h.port_bindings, None);
    }

    #[test]
    fn bad_quantities_are_spec_errors() {
        let mut t = full();
        t.resources
            .as_mut()
            .unwrap()
            .limits
            .as_mut()
            .unwrap()
            .memory = Some(ByteQuantity::new("300m"));
        let e = create_body(&id(), &t).unwrap_err();
        assert_eq!(e.field, "resources.limits.memory");
    }
}
