//! How Services, Tasks and Hosts read in tables and summaries (shared by
//! `get`, `ps`, `describe`, `host ls` and `apply --wait`).

use std::collections::BTreeMap;

use shoal_crds::{Condition, ConditionStatus, DesiredState, Host, Service, ServiceMode, Task};

use crate::output::{Cell, Colour, Table, age};

/// The label every Task carries with its Service's name.
pub const SERVICE_LABEL: &str = "shoal.dev/service";

/// `True`/`False`/`Unknown`.
pub fn cond_status(s: ConditionStatus) -> &'static str {
    match s {
        ConditionStatus::True => "True",
        ConditionStatus::False => "False",
        ConditionStatus::Unknown => "Unknown",
    }
}

/// A condition by type.
pub fn condition<'a>(conds: Option<&'a Vec<Condition>>, type_: &str) -> Option<&'a Condition> {
    conds.and_then(|c| c.iter().find(|c| c.type_ == type_))
}

/// Desired tasks of a service: `replicas` in Replicated mode, the status's
/// count in Global mode.
pub fn desired(s: &Service) -> i32 {
    match s.spec.mode() {
        ServiceMode::Replicated => s.spec.replicas(),
        ServiceMode::Global => s.status.as_ref().and_then(|st| st.replicas).unwrap_or(0),
    }
}

/// Ready tasks of a service.
pub fn ready(s: &Service) -> i32 {
    s.status
        .as_ref()
        .and_then(|st| st.ready_replicas)
        .unwrap_or(0)
}

fn debug_word<T: std::fmt::Debug>(v: Option<T>, default: &str) -> String {
    v.map_or_else(|| default.to_string(), |v| format!("{v:?}"))
}

/// Phase of a task as a word (`Pending` when not reported yet).
pub fn phase(t: &Task) -> String {
    debug_word(t.status.as_ref().and_then(|s| s.phase), "Pending")
}

/// The task's last error, for a person: reason, exit code and message.
pub fn last_error(t: &Task) -> String {
    let Some(st) = &t.status else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(r) = st.reason.as_deref().filter(|r| !r.is_empty()) {
        parts.push(r.to_string());
    }
    if let Some(c) = st.exit_code.filter(|c| *c != 0) {
        parts.push(format!("exit code {c}"));
    }
    if st.oom_killed == Some(true) {
        parts.push("OOM killed".into());
    }
    let mut out = parts.join(", ");
    if let Some(m) = st.message.as_deref().filter(|m| !m.is_empty()) {
        if out.is_empty() {
            out = m.to_string();
        } else {
            out = format!("{out}: {m}");
        }
    }
    out
}

/// Services as a table.
pub fn services_table(items: &[Service], wide: bool) -> Table {
    let mut h = vec!["NAME", "MODE", "READY", "UP-TO-DATE"];
    if wide {
        h.extend(["IMAGE", "PORTS", "STATUS"]);
    }
    h.push("AGE");
    let mut t = Table::new(h);
    for s in items {
        let (d, r) = (desired(s), ready(s));
        let updated = s
            .status
            .as_ref()
            .and_then(|st| st.updated_replicas)
            .unwrap_or(0);
        let colour = if r >= d {
            Colour::Green
        } else if r == 0 && d > 0 {
            Colour::Red
        } else {
            Colour::Yellow
        };
        let mut row: Vec<Cell> = vec![
            s.metadata.name.clone().unwrap_or_default().into(),
            format!("{:?}", s.spec.mode()).into(),
            Cell::coloured(format!("{r}/{d}"), colour),
            updated.to_string().into(),
        ];
        if wide {
            let ports: Vec<String> = s
                .spec
                .template
                .ports
                .iter()
                .flatten()
                .map(|p| match p.host_port {
                    Some(0) => format!("auto->{}", p.container_port),
                    Some(hp) => format!("{hp}->{}", p.container_port),
                    None => p.container_port.to_string(),
                })
                .collect();
            row.push(s.spec.template.image.clone().into());
            row.push(ports.join(",").into());
            row.push(stuck_reason(s).unwrap_or_default().into());
        }
        row.push(age(s.metadata.creation_timestamp.as_ref()).into());
        t.row(row);
    }
    t
}

/// Why a service is not progressing, from its conditions: the
/// `Schedulable=False` message, else a paused update.
pub fn stuck_reason(s: &Service) -> Option<String> {
    let conds = s.status.as_ref().and_then(|st| st.conditions.as_ref());
    if let Some(c) = condition(conds, "Schedulable")
        && c.status == ConditionStatus::False
    {
        return Some(c.message.clone().unwrap_or_else(|| "Unschedulable".into()));
    }
    failed_rollout(conds)
}

/// A rollout that failed (paused, rolling back or rolled back), from the
/// `Progressing` condition: its message.
pub fn failed_rollout(conds: Option<&Vec<Condition>>) -> Option<String> {
    let c = condition(conds, "Progressing")?;
    let what = match c.reason.as_deref()? {
        "UpdatePaused" => "update paused",
        "RollingBack" => "update failed, rolling back",
        "RolledBack" => "update rolled back",
        "RollbackPaused" => "rollback paused",
        _ => return None,
    };
    Some(match &c.message {
        Some(m) => format!("{what}: {m}"),
        None => what.into(),
    })
}

/// Sorts tasks by service, slot (or host), then age (newest first within a slot).
pub fn sort_tasks(items: &mut [Task]) {
    items.sort_by(|a, b| {
        (
            &a.spec.service,
            a.spec.slot,
            &a.spec.host_name,
            std::cmp::Reverse(a.metadata.creation_timestamp.as_ref().map(|t| t.0)),
        )
            .cmp(&(
                &b.spec.service,
                b.spec.slot,
                &b.spec.host_name,
                std::cmp::Reverse(b.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            ))
    });
}

/// Tasks as a table (`ps` and `get tasks`); `with_service` adds the SERVICE column.
pub fn tasks_table(items: &[Task], with_service: bool, wide: bool) -> Table {
    let mut h = vec!["NAME"];
    if with_service {
        h.push("SERVICE");
    }
    h.extend([
        "SLOT",
        "HOST",
        "DESIRED",
        "PHASE",
        "HEALTH",
        "RESTARTS",
        "AGE",
        "LAST ERROR",
    ]);
    if wide {
        h.extend(["CONTAINER", "TEMPLATE"]);
    }
    let mut t = Table::new(h);
    for task in items {
        let st = task.status.as_ref();
        let mut row: Vec<Cell> = vec![task.metadata.name.clone().unwrap_or_default().into()];
        if with_service {
            row.push(task.spec.service.clone().into());
        }
        let desired = task.spec.desired_state();
        row.extend([
            task.spec
                .slot
                .map_or_else(|| "-".to_string(), |s| s.to_string())
                .into(),
            task.spec
                .host_name
                .clone()
                .unwrap_or_else(|| "<unplaced>".into())
                .into(),
            Cell::coloured(
                format!("{desired:?}"),
                if desired == DesiredState::Running {
                    Colour::Plain
                } else {
                    Colour::Yellow
                },
            ),
            Cell::state(phase(task)),
            Cell::state(debug_word(st.and_then(|s| s.health), "-")),
            st.and_then(|s| s.restart_count)
                .unwrap_or(0)
                .to_string()
                .into(),
            age(task.metadata.creation_timestamp.as_ref()).into(),
            last_error(task).into(),
        ]);
        if wide {
            let cid = st
                .and_then(|s| s.container_id.clone())
                .unwrap_or_default()
                .chars()
                .take(12)
                .collect::<String>();
            row.push(cid.into());
            row.push(
                task.spec
                    .template_hash
                    .chars()
                    .take(10)
                    .collect::<String>()
                    .into(),
            );
        }
        t.row(row);
    }
    t
}

/// `True`/`False`/`Unknown` of a host's Ready condition.
pub fn host_ready(h: &Host) -> String {
    condition(
        h.status.as_ref().and_then(|s| s.conditions.as_ref()),
        "Ready",
    )
    .map_or_else(|| "Unknown".into(), |c| cond_status(c.status).into())
}

/// Hosts as a table; `tasks` counts live tasks per host.
pub fn hosts_table(items: &[Host], tasks: &BTreeMap<String, usize>, wide: bool) -> Table {
    let mut h = vec![
        "NAME",
        "READY",
        "AVAILABILITY",
        "TASKS",
        "CPU",
        "MEMORY",
        "ENGINE",
    ];
    if wide {
        h.extend(["ADDRESS", "OS/ARCH", "AGENT", "LABELS"]);
    }
    h.push("AGE");
    let mut t = Table::new(h);
    for host in items {
        let name = host.metadata.name.clone().unwrap_or_default();
        let st = host.status.as_ref();
        let alloc = st.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        let mut row: Vec<Cell> = vec![
            name.clone().into(),
            Cell::state(host_ready(host)),
            Cell::state(format!("{:?}", host.spec.availability())),
            tasks.get(&name).copied().unwrap_or(0).to_string().into(),
            alloc
                .map(|a| cpu(a.cpu.as_ref()))
                .unwrap_or_default()
                .into(),
            alloc
                .map(|a| memory(a.memory.as_ref()))
                .unwrap_or_default()
                .into(),
            st.and_then(|s| s.engine_version.clone())
                .unwrap_or_default()
                .into(),
        ];
        if wide {
            let labels: Vec<String> = host
                .metadata
                .labels
                .iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            row.push(
                st.and_then(|s| s.address.clone())
                    .unwrap_or_default()
                    .into(),
            );
            row.push(
                format!(
                    "{}/{}",
                    st.and_then(|s| s.os.clone()).unwrap_or_default(),
                    st.and_then(|s| s.arch.clone()).unwrap_or_default()
                )
                .into(),
            );
            row.push(
                st.and_then(|s| s.agent_version.clone())
                    .unwrap_or_default()
                    .into(),
            );
            row.push(labels.join(",").into());
        }
        row.push(age(host.metadata.creation_timestamp.as_ref()).into());
        t.row(row);
    }
    t
}

/// Live tasks (desired Running, not terminal) per host name.
pub fn tasks_per_host(tasks: &[Task]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in tasks.iter().filter(|t| is_live(t)) {
        if let Some(h) = &t.spec.host_name {
            *m.entry(h.clone()).or_insert(0) += 1;
        }
    }
    m
}

/// Desired Running and not ended.
pub fn is_live(t: &Task) -> bool {
    t.spec.desired_state() == DesiredState::Running
        && !t
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p.is_terminal())
}

/// CPU in cores (`2`, `1.5`), as a person reads it.
pub fn cpu(q: Option<&shoal_crds::CpuQuantity>) -> String {
    let Some(q) = q else { return String::new() };
    match q.parse() {
        Ok(milli) if milli % 1000 == 0 => (milli / 1000).to_string(),
        Ok(milli) => format!("{:.2}", milli as f64 / 1000.0)
            .trim_end_matches('0')
            .to_string(),
        Err(_) => q.to_string(),
    }
}

/// Bytes in binary units (`23.5Gi`, `512Mi`), as a person reads them.
pub fn memory(q: Option<&shoal_crds::ByteQuantity>) -> String {
    let Some(q) = q else { return String::new() };
    let Ok(b) = q.parse() else {
        return q.to_string();
    };
    bytes(b)
}

/// A byte count in binary units (`23.5Gi`, `512Mi`, `900`).
pub fn bytes(b: u64) -> String {
    let units = [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (u, n) in units {
        if b >= n {
            let v = b as f64 / n as f64;
            return if b.is_multiple_of(n) {
                format!("{}{u}", b / n)
            } else {
                format!("{v:.1}{u}")
            };
        }
    }
    format!("{b}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_well() {
        let c = |s: &str| cpu(Some(&shoal_crds::CpuQuantity::new(s)));
        assert_eq!(c("2000m"), "2");
        assert_eq!(c("1500m"), "1.5");
        assert_eq!(c("0.25"), "0.25");
        let m = |s: &str| memory(Some(&shoal_crds::ByteQuantity::new(s)));
        assert_eq!(m("25276510208"), "23.5Gi");
        assert_eq!(m("64Mi"), "64Mi");
        assert_eq!(m("100"), "100");
    }
}
