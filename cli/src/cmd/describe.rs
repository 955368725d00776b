//! `shoal describe service|task|host NAME`.

use std::fmt::Write as _;
use std::process::ExitCode;

use kube::api::ListParams;
use shoal_crds::{Condition, Host, Service, Task};

use crate::client::{Conn, ConnArgs, block_on, connect};
use crate::cmd::events;
use crate::cmd::get::{Kind, parse_kind};
use crate::output::{Cell, Table, age, colour_stdout};
use crate::view;

/// Show one Service, Task or Host in detail
///
/// A service: its spec in brief, ready/desired, tasks per host, conditions
/// (with the reason it is stuck, if it is), its tasks with their last
/// errors, and the events of the service and its tasks. A task: service,
/// slot, host, phase, reason, exit code, restarts, container and its events.
/// A host: readiness, availability, capacity, engine, the tasks it runs and
/// its events.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// service, task or host.
    #[arg(value_parser = parse_kind)]
    kind: Kind,
    /// Its name.
    name: String,
    #[command(flatten)]
    conn: ConnArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(describe(args))
}

async fn describe(args: Args) -> anyhow::Result<ExitCode> {
    let conn = connect(&args.conn).await?;
    let text = match args.kind {
        Kind::Services => service(&conn, &args.name).await?,
        Kind::Tasks => task(&conn, &args.name).await?,
        Kind::Hosts => host(&conn, &args.name).await?,
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `k=v,k2=v2`, or `<none>`.
fn labels(meta: &kube::api::ObjectMeta) -> String {
    let labels: Vec<String> = meta
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if labels.is_empty() {
        "<none>".into()
    } else {
        labels.join(",")
    }
}

fn field(out: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{:<20}{value}", format!("{key}:"));
}

fn conditions(out: &mut String, conds: Option<&Vec<Condition>>) {
    let _ = writeln!(out, "Conditions:");
    let Some(conds) = conds.filter(|c| !c.is_empty()) else {
        let _ = writeln!(out, "  <none>");
        return;
    };
    let mut t = Table::new(["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]);
    for c in conds {
        t.row(vec![
            c.type_.clone().into(),
            Cell::state(view::cond_status(c.status)),
            c.reason.clone().unwrap_or_default().into(),
            age(c.last_transition_time.as_ref()).into(),
            c.message.clone().unwrap_or_default().into(),
        ]);
    }
    indent(out, &t.render(colour_stdout()));
}

fn indent(out: &mut String, text: &str) {
    for l in text.lines() {
        let _ = writeln!(out, "  {l}");
    }
}

async fn service(conn: &Conn, name: &str) -> anyhow::Result<String> {
    let Some(s) = conn
        .namespaced::<Service>()
        .get_opt(name)
        .await
        .map_err(|e| conn.explain(e))?
    else {
        anyhow::bail!("service {name:?} not found in namespace {}", conn.namespace);
    };
    let mut tasks = conn
        .namespaced::<Task>()
        .list(&ListParams::default().labels(&format!("{}={name}", view::SERVICE_LABEL)))
        .await
        .map_err(|e| conn.explain(e))?
        .items;
    view::sort_tasks(&mut tasks);
    let mut out = String::new();
    let spec = &s.spec;
    let tpl = &spec.template;
    field(&mut out, "Name", name);
    field(&mut out, "Namespace", &conn.namespace);
    field(&mut out, "Labels", labels(&s.metadata));
    field(
        &mut out,
        "Created",
        age(s.metadata.creation_timestamp.as_ref()) + " ago",
    );
    if s.metadata.deletion_timestamp.is_some() {
        field(
            &mut out,
            "Deleting",
            "yes (tasks and containers are stopping)",
        );
    }
    field(&mut out, "Mode", format!("{:?}", spec.mode()));
    let st = s.status.as_ref();
    field(
        &mut out,
        "Replicas",
        format!(
            "{} desired, {} ready, {} up to date",
            view::desired(&s),
            view::ready(&s),
            st.and_then(|x| x.updated_replicas).unwrap_or(0)
        ),
    );
    field(&mut out, "Image", &tpl.image);
    if let Some(c) = &tpl.command {
        field(&mut out, "Command", format!("{c:?}"));
    }
    if let Some(ports) = tpl.ports.as_ref().filter(|p| !p.is_empty()) {
        let p: Vec<String> = ports
            .iter()
            .map(|p| match p.host_port {
                Some(0) => format!("auto->{}", p.container_port),
                Some(h) => format!("{h}->{}", p.container_port),
                None => p.container_port.to_string(),
            })
            .collect();
        field(&mut out, "Ports", p.join(", "));
    }
    if let Some(r) = &tpl.resources {
        field(&mut out, "Resources", serde_json::to_string(r)?);
    }
    if let Some(r) = &spec.restart_policy {
        field(&mut out, "Restart policy", serde_json::to_string(r)?);
    }
    if let Some(p) = &spec.placement {
        field(&mut out, "Placement", serde_json::to_string(p)?);
    }
    if let Some(u) = &spec.update {
        field(&mut out, "Update config", serde_json::to_string(u)?);
    }
    // Swarm's `UpdateStatus`: where the last template change stands.
    if let Some(u) = st.and_then(|x| x.update.as_ref()) {
        let mut line = format!("{:?} (template {}", u.state, u.template_hash);
        if let Some(to) = &u.rollback_to {
            line.push_str(&format!(", back to {to}"));
        }
        if let Some(at) = &u.started_at {
            line.push_str(&format!(", started {} ago", age(Some(at))));
        }
        line.push(')');
        if let Some(m) = &u.message {
            line.push_str(&format!(": {m}"));
        }
        field(&mut out, "Update status", line);
    }
    // Tasks that should run, per host, by phase: `host-a: 3 (3 Running)`.
    let mut per_host: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, usize>,
    > = std::collections::BTreeMap::new();
    for t in tasks
        .iter()
        .filter(|t| t.spec.desired_state() == shoal_crds::DesiredState::Running)
    {
        let host = t
            .spec
            .host_name
            .clone()
            .unwrap_or_else(|| "<unplaced>".into());
        *per_host
            .entry(host)
            .or_default()
            .entry(view::phase(t))
            .or_insert(0) += 1;
    }
    let _ = writeln!(out, "Tasks per host:");
    if per_host.is_empty() {
        let _ = writeln!(out, "  <none>");
    }
    for (h, phases) in &per_host {
        let n: usize = phases.values().sum();
        let detail: Vec<String> = phases.iter().map(|(p, c)| format!("{c} {p}")).collect();
        let _ = writeln!(out, "  {h}: {n} ({})", detail.join(", "));
    }
    conditions(&mut out, st.and_then(|x| x.conditions.as_ref()));
    let _ = writeln!(out, "Tasks:");
    if tasks.is_empty() {
        let _ = writeln!(out, "  <none>");
    } else {
        indent(
            &mut out,
            &view::tasks_table(&tasks, false, false).render(colour_stdout()),
        );
    }
    let mut objects = vec![(Kind::Services, name)];
    objects.extend(
        tasks
            .iter()
            .filter_map(|t| t.metadata.name.as_deref())
            .map(|n| (Kind::Tasks, n)),
    );
    let events = events::about(conn, Some(&conn.namespace), &objects).await?;
    events::describe_section(&mut out, &events, true);
    Ok(out)
}

async fn task(conn: &Conn, name: &str) -> anyhow::Result<String> {
    let Some(t) = conn
        .namespaced::<Task>()
        .get_opt(name)
        .await
        .map_err(|e| conn.explain(e))?
    else {
        anyhow::bail!("task {name:?} not found in namespace {}", conn.namespace);
    };
    let mut out = String::new();
    let st = t.status.clone().unwrap_or_default();
    field(&mut out, "Name", name);
    field(&mut out, "Namespace", &conn.namespace);
    field(&mut out, "Service", &t.spec.service);
    field(
        &mut out,
        "Slot",
        t.spec
            .slot
            .map_or_else(|| "- (global)".into(), |s| s.to_string()),
    );
    field(
        &mut out,
        "Host",
        t.spec
            .host_name
            .clone()
            .unwrap_or_else(|| "<unplaced>".into()),
    );
    field(
        &mut out,
        "Desired state",
        format!("{:?}", t.spec.desired_state()),
    );
    field(&mut out, "Phase", view::phase(&t));
    if let Some(r) = &st.reason {
        field(&mut out, "Reason", r);
    }
    if let Some(m) = &st.message {
        field(&mut out, "Message", m);
    }
    if let Some(h) = st.health {
        field(&mut out, "Health", format!("{h:?}"));
    }
    field(&mut out, "Restarts", st.restart_count.unwrap_or(0));
    if let Some(c) = st.exit_code {
        field(&mut out, "Last exit code", c);
    }
    if st.oom_killed == Some(true) {
        field(&mut out, "OOM killed", "yes");
    }
    if let Some(c) = &st.container_id {
        field(&mut out, "Container", c);
    }
    if st.started_at.is_some() {
        field(&mut out, "Started", age(st.started_at.as_ref()) + " ago");
    }
    if st.finished_at.is_some() {
        field(&mut out, "Finished", age(st.finished_at.as_ref()) + " ago");
    }
    field(
        &mut out,
        "Created",
        age(t.metadata.creation_timestamp.as_ref()) + " ago",
    );
    field(&mut out, "Image", &t.spec.template.image);
    field(&mut out, "Template hash", &t.spec.template_hash);
    let events = events::about(conn, Some(&conn.namespace), &[(Kind::Tasks, name)]).await?;
    events::describe_section(&mut out, &events, false);
    Ok(out)
}

async fn host(conn: &Conn, name: &str) -> anyhow::Result<String> {
    let Some(h) = conn
        .cluster::<Host>()
        .get_opt(name)
        .await
        .map_err(|e| conn.explain(e))?
    else {
        anyhow::bail!("host {name:?} not found");
    };
    let all: kube::Api<Task> = kube::Api::all(conn.client.clone());
    let mut tasks: Vec<Task> = all
        .list(&ListParams::default())
        .await
        .map_err(|e| conn.explain(e))?
        .items
        .into_iter()
        .filter(|t| t.spec.host_name.as_deref() == Some(name))
        .collect();
    view::sort_tasks(&mut tasks);
    let st = h.status.clone().unwrap_or_default();
    let mut out = String::new();
    field(&mut out, "Name", name);
    field(&mut out, "Labels", labels(&h.metadata));
    field(&mut out, "Ready", view::host_ready(&h));
    field(
        &mut out,
        "Availability",
        format!("{:?}", h.spec.availability()),
    );
    let res = |r: &Option<shoal_crds::HostResources>| {
        r.as_ref().map_or_else(
            || "-".to_string(),
            |r| {
                format!(
                    "cpu {}, memory {}",
                    view::cpu(r.cpu.as_ref()),
                    view::memory(r.memory.as_ref())
                )
            },
        )
    };
    field(&mut out, "Capacity", res(&st.capacity));
    field(&mut out, "Allocatable", res(&st.allocatable));
    field(
        &mut out,
        "Engine",
        format!(
            "{} (API {})",
            st.engine_version.clone().unwrap_or_default(),
            st.engine_api_version.clone().unwrap_or_default()
        ),
    );
    field(
        &mut out,
        "OS/arch",
        format!(
            "{}/{}",
            st.os.clone().unwrap_or_default(),
            st.arch.clone().unwrap_or_default()
        ),
    );
    if let Some(a) = &st.agent_version {
        field(&mut out, "Agent", a);
    }
    if let Some(a) = &st.address {
        field(&mut out, "Address", a);
    }
    field(
        &mut out,
        "Joined",
        age(h.metadata.creation_timestamp.as_ref()) + " ago",
    );
    conditions(&mut out, st.conditions.as_ref());
    let _ = writeln!(out, "Tasks:");
    if tasks.is_empty() {
        let _ = writeln!(out, "  <none>");
    } else {
        indent(
            &mut out,
            &view::tasks_table(&tasks, true, false).render(colour_stdout()),
        );
    }
    // Events of cluster-scoped objects live in `default`, as in Kubernetes.
    let events = events::about(conn, None, &[(Kind::Hosts, name)]).await?;
    events::describe_section(&mut out, &events, false);
    Ok(out)
}
