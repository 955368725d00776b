//! `shoal apply -f FILE|DIR|- [--dry-run] [--wait]`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kube::api::{ListParams, PostParams};
use shoal_crds::{ConditionStatus, Host, Service, Task, TaskPhase, Validated, validate};

use crate::client::{Conn, ConnArgs, EXIT_FAILED, EXIT_INVALID, block_on, connect};
use crate::view;

/// Create or update Services (and Hosts) from manifests
///
/// Reads multi-document YAML from files, a directory or `-` (standard
/// input). Every document is validated first with the API server's rules;
/// if any is refused nothing is written, each problem is printed as
/// `SOURCE: field.path: reason` and the exit status is 2. Then each object
/// is created, or updated so that the file is the truth for what it names:
/// its spec, labels and annotations replace the stored ones. Prints
/// `service/NAME created|configured|unchanged`.
///
/// With `--wait`, follows every applied service until all its replicas are
/// ready, printing a line when its progress changes
/// (`web: 2/3 ready (host-a: 2, <unplaced>: 1)`) with the reason when it is
/// stuck (e.g. `0/3 hosts: 3 insufficient memory`, `ImageNotFound`). A
/// service counts as ready once it has stayed ready, without a restart, for
/// its `update.monitor` period (default 5s); a task whose restart attempts
/// are used up (`Failed`) or a paused update ends the wait at once.
///
/// Exit status: 0 applied (and ready with --wait); 1 a file, the API or a
/// write failed; 2 a document was refused; 3 --wait timed out or a service
/// failed (its reason is printed).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest file, directory of `.yaml`/`.yml`/`.json` files, or `-` for
    /// standard input. Repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    files: Vec<PathBuf>,
    /// Validate and ask the API what would change, but write nothing (to
    /// check files without an API, use `shoal validate`).
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    conn: ConnArgs,
}

/// `--wait` and `--timeout` of the commands that change services.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct WaitArgs {
    /// Wait until the service's replicas all run its template and are
    /// ready (every applied service's, for apply).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. `90s`, `5m`.
    #[arg(long, default_value = "5m", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// How long a service must stay ready to count as ready, unless its
/// `update.monitor` says otherwise.
const DEFAULT_MONITOR: Duration = Duration::from_secs(5);

/// Parses `--timeout` (`30s`, `5m`, `1m30s`; a bare number is seconds).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    shoal_crds::quantity::parse_duration(s).map_err(|e| e.to_string())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(apply(args))
}

/// What an apply did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
        }
    }
}

/// A service to follow with --wait: namespace, name, generation written.
#[derive(Debug, Clone)]
pub struct Applied {
    pub namespace: String,
    pub name: String,
    pub generation: i64,
}

async fn apply(args: Args) -> anyhow::Result<ExitCode> {
    let mut docs = Vec::new();
    for path in &args.files {
        docs.extend(shoal_crds::manifest::read_path(path)?);
    }
    if docs.is_empty() {
        anyhow::bail!("no documents found in {:?}", args.files);
    }
    let mut valid = Vec::new();
    let mut refused = false;
    for doc in &docs {
        match validate(&doc.value) {
            Ok(Validated::Task(t)) => {
                refused = true;
                eprintln!(
                    "{}: task/{}: Tasks are created by the control plane; apply Services instead",
                    doc.source,
                    t.metadata.name.clone().unwrap_or_default()
                );
            }
            Ok(v) => valid.push((doc.source.clone(), v)),
            Err(errs) => {
                refused = true;
                for e in errs.0 {
                    eprintln!("{}: {e}", doc.source);
                }
            }
        }
    }
    if refused {
        eprintln!("nothing applied: fix the documents above");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    let conn = connect(&args.conn).await?;
    let mut applied = Vec::new();
    for (source, v) in valid {
        match v {
            Validated::Service(s) => {
                let name = s.metadata.name.clone().unwrap_or_default();
                let ns = s
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| conn.namespace.clone());
                let (outcome, generation) = apply_service(&conn, &ns, *s, args.dry_run)
                    .await
                    .map_err(|e| e.context(format!("{source}: service/{name}")))?;
                println!(
                    "service/{name} {}{}",
                    outcome.word(),
                    if args.dry_run { " (dry run)" } else { "" }
                );
                applied.push(Applied {
                    namespace: ns,
                    name,
                    generation,
                });
            }
            Validated::Host(h) => {
                let name = h.metadata.name.clone().unwrap_or_default();
                let outcome = apply_host(&conn, *h, args.dry_run)
                    .await
                    .map_err(|e| e.context(format!("{source}: host/{name}")))?;
                println!(
                    "host/{name} {}{}",
                    outcome.word(),
                    if args.dry_run { " (dry run)" } else { "" }
                );
            }
            Validated::Task(_) => {}
        }
    }
    if args.wait.wait && !args.dry_run && !applied.is_empty() {
        return wait_ready(&conn, &applied, args.wait.timeout).await;
    }
    Ok(ExitCode::SUCCESS)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

async fn apply_service(
    conn: &Conn,
    ns: &str,
    file: Service,
    dry_run: bool,
) -> anyhow::Result<(Outcome, i64)> {
    let api = conn.in_namespace::<Service>(ns);
    let name = file.metadata.name.clone().unwrap_or_default();
    for _ in 0..10 {
        match api.get_opt(&name).await.map_err(|e| conn.explain(e))? {
            None => {
                if dry_run {
                    return Ok((Outcome::Created, 0));
                }
                let mut obj = Service::new(&name, file.spec.clone());
                obj.metadata.namespace = Some(ns.to_string());
                obj.metadata.labels = file.metadata.labels.clone();
                obj.metadata.annotations = file.metadata.annotations.clone();
                match api.create(&PostParams::default(), &obj).await {
                    Ok(o) => return Ok((Outcome::Created, o.metadata.generation.unwrap_or(1))),
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => return Err(conn.explain(e)),
                }
            }
            Some(mut cur) => {
                if cur.metadata.deletion_timestamp.is_some() {
                    anyhow::bail!(
                        "is being deleted (its tasks are stopping): apply again once it is gone"
                    );
                }
                if cur.spec == file.spec
                    && cur.metadata.labels.clone().unwrap_or_default()
                        == file.metadata.labels.clone().unwrap_or_default()
                    && cur.metadata.annotations.clone().unwrap_or_default()
                        == file.metadata.annotations.clone().unwrap_or_default()
                {
                    return Ok((Outcome::Unchanged, cur.metadata.generation.unwrap_or(0)));
                }
                if dry_run {
                    return Ok((Outcome::Configured, 0));
                }
                cur.spec = file.spec.clone();
                cur.metadata.labels = file.metadata.labels.clone();
                cur.metadata.annotations = file.metadata.annotations.clone();
                cur.status = None;
                match api.replace(&name, &PostParams::default(), &cur).await {
                    Ok(o) => {
                        return Ok((Outcome::Configured, o.metadata.generation.unwrap_or(0)));
                    }
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => return Err(conn.explain(e)),
                }
            }
        }
    }
    anyhow::bail!("kept conflicting with other writers; try again")
}

async fn apply_host(conn: &Conn, file: Host, dry_run: bool) -> anyhow::Result<Outcome> {
    let api = conn.cluster::<Host>();
    let name = file.metadata.name.clone().unwrap_or_default();
    for _ in 0..10 {
        let Some(mut cur) = api.get_opt(&name).await.map_err(|e| conn.explain(e))? else {
            anyhow::bail!("no such host: hosts join when their agent first connects");
        };
        if cur.spec == file.spec
            && cur.metadata.labels.clone().unwrap_or_default()
                == file.metadata.labels.clone().unwrap_or_default()
        {
            return Ok(Outcome::Unchanged);
        }
        if dry_run {
            return Ok(Outcome::Configured);
        }
        cur.spec = file.spec.clone();
        cur.metadata.labels = file.metadata.labels.clone();
        if file.metadata.annotations.is_some() {
            cur.metadata.annotations = file.metadata.annotations.clone();
        }
        cur.status = None;
        match api.replace(&name, &PostParams::default(), &cur).await {
            Ok(_) => return Ok(Outcome::Configured),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(conn.explain(e)),
        }
    }
    anyhow::bail!("kept conflicting with other writers; try again")
}

/// Where one service stands while waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not there yet: the progress line.
    Waiting(String),
    /// All replicas ready.
    Ready(String),
    /// Will not get there by itself: why.
    Failed(String),
}

/// Judges one service and its tasks against the generation written.
pub fn judge(svc: Option<&Service>, tasks: &[Task], name: &str, generation: i64) -> Progress {
    let Some(svc) = svc else {
        return Progress::Failed(format!("{name}: the service was deleted"));
    };
    let status = svc.status.as_ref();
    let observed = status.and_then(|s| s.observed_generation).unwrap_or(0);
    let (ready, desired) = (view::ready(svc), view::desired(svc));
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks.iter().filter(|t| view::is_live(t)) {
        let host = t
            .spec
            .host_name
            .clone()
            .unwrap_or_else(|| "<unplaced>".into());
        *per_host.entry(host).or_insert(0) += 1;
    }
    let placement: Vec<String> = per_host.iter().map(|(h, n)| format!("{h}: {n}")).collect();
    let mut line = format!("{name}: {ready}/{desired} ready");
    if !placement.is_empty() {
        line.push_str(&format!(" ({})", placement.join(", ")));
    }
    let restarts: i32 = tasks
        .iter()
        .filter(|t| t.spec.desired_state() == shoal_crds::DesiredState::Running)
        .filter_map(|t| t.status.as_ref().and_then(|s| s.restart_count))
        .sum();
    if restarts > 0 {
        line.push_str(&format!(", {restarts} restarts"));
    }
    if observed < generation {
        return Progress::Waiting(line);
    }
    let conds = status.and_then(|s| s.conditions.as_ref());
    let complete = view::condition(conds, "Progressing").is_some_and(|c| {
        c.status == ConditionStatus::False && c.reason.as_deref() == Some("Complete")
    });
    if complete && ready >= desired {
        return Progress::Ready(line);
    }
    // Restart attempts used up: Swarm's semantics, not replaced.
    if let Some(t) = tasks.iter().find(|t| {
        t.spec.desired_state() == shoal_crds::DesiredState::Running
            && t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Failed)
    }) {
        return Progress::Failed(format!(
            "{line}: task {} failed: {}",
            t.metadata.name.clone().unwrap_or_default(),
            view::last_error(t)
        ));
    }
    if let Some(why) = view::failed_rollout(conds) {
        let paused = view::condition(conds, "Progressing")
            .and_then(|c| c.reason.as_deref())
            .is_some_and(|r| r.ends_with("Paused"));
        let hint = if paused {
            format!(" (once the cause is fixed: shoal resume {name}; or shoal rollback {name})")
        } else {
            String::new()
        };
        return Progress::Failed(format!("{line}: {why}{hint}"));
    }
    let mut why = Vec::new();
    if let Some(r) = view::stuck_reason(svc) {
        why.push(r);
    }
    for t in tasks.iter().filter(|t| view::is_live(t)) {
        let phase = t.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
        let reason = t.status.as_ref().and_then(|s| s.reason.clone());
        if phase != TaskPhase::Running
            && let Some(r) = reason.filter(|r| !r.is_empty())
        {
            why.push(format!(
                "{} {phase:?} {r}",
                t.metadata.name.clone().unwrap_or_default()
            ));
        }
    }
    // Replaced rejections keep their reason on the ended task.
    if let Some(t) = tasks
        .iter()
        .find(|t| t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Rejected))
    {
        why.push(format!(
            "{} Rejected: {}",
            t.metadata.name.clone().unwrap_or_default(),
            view::last_error(t)
        ));
    }
    if !why.is_empty() {
        line.push_str(&format!(" — {}", why.join("; ")));
    }
    Progress::Waiting(line)
}

/// Follows the services until all are ready (0), one fails or time runs out (3).
pub async fn wait_ready(
    conn: &Conn,
    services: &[Applied],
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: BTreeMap<String, Progress> = BTreeMap::new();
    let mut settle: BTreeMap<String, (tokio::time::Instant, i32)> = BTreeMap::new();
    loop {
        let mut all_ready = true;
        for a in services {
            let key = format!("{}/{}", a.namespace, a.name);
            let svc = conn
                .in_namespace::<Service>(&a.namespace)
                .get_opt(&a.name)
                .await
                .map_err(|e| conn.explain(e))?;
            let tasks = conn
                .in_namespace::<Task>(&a.namespace)
                .list(&ListParams::default().labels(&format!("{}={}", view::SERVICE_LABEL, a.name)))
                .await
                .map_err(|e| conn.explain(e))?
                .items;
            let p = judge(svc.as_ref(), &tasks, &a.name, a.generation);
            // Ready only once it has stayed ready, without a restart, for
            // the service's update monitor period (default 5s), as Swarm
            // does: a container that crashes after 2 s is not "ready".
            let restarts: i32 = tasks
                .iter()
                .filter(|t| view::is_live(t))
                .filter_map(|t| t.status.as_ref().and_then(|s| s.restart_count))
                .sum();
            let monitor = svc
                .as_ref()
                .and_then(|s| s.spec.update.as_ref())
                .and_then(|u| u.monitor.as_ref())
                .and_then(|m| m.parse().ok())
                .unwrap_or(DEFAULT_MONITOR);
            let p = match p {
                Progress::Ready(l) => {
                    let now = tokio::time::Instant::now();
                    let since = settle.entry(key.clone()).or_insert((now, restarts));
                    if since.1 != restarts {
                        *since = (now, restarts);
                    }
                    if now.duration_since(since.0) >= monitor {
                        Progress::Ready(l)
                    } else {
                        Progress::Waiting(format!("{l}, settling"))
                    }
                }
                other => {
                    settle.remove(&key);
                    other
                }
            };
            if last.get(&key) != Some(&p) {
                match &p {
                    Progress::Waiting(l) => println!("{l}"),
                    Progress::Ready(l) => println!("{l} ✓"),
                    Progress::Failed(l) => eprintln!("failed: {l}"),
                }
            }
            if let Progress::Failed(_) = p {
                return Ok(ExitCode::from(EXIT_FAILED));
            }
            if !matches!(p, Progress::Ready(_)) {
                all_ready = false;
            }
            last.insert(key, p);
        }
        if all_ready {
            println!("all {} service(s) ready", services.len());
            return Ok(ExitCode::SUCCESS);
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("timed out after {}s waiting for:", timeout.as_secs());
            for p in last.values() {
                if let Progress::Waiting(l) = p {
                    eprintln!("  {l}");
                }
            }
            return Ok(ExitCode::from(EXIT_FAILED));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crds::{Condition, ServiceSpec, ServiceStatus, TaskSpec, TaskStatus};

    fn svc(replicas: i32, generation: i64, status: ServiceStatus) -> Service {
        let mut s = Service::new(
            "web",
            ServiceSpec {
                replicas: Some(replicas),
                ..ServiceSpec::default()
            },
        );
        s.metadata.generation = Some(generation);
        s.status = Some(status);
        s
    }

    fn cond(type_: &str, status: ConditionStatus, reason: &str, msg: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status,
            reason: Some(reason.into()),
            message: Some(msg.into()),
            last_transition_time: None,
        }
    }

    fn status(observed: i64, ready: i32, conditions: Vec<Condition>) -> ServiceStatus {
        ServiceStatus {
            observed_generation: Some(observed),
            replicas: Some(ready),
            ready_replicas: Some(ready),
            updated_replicas: Some(ready),
            update: None,
            conditions: Some(conditions),
        }
    }

    fn task(name: &str, host: Option<&str>, phase: TaskPhase, reason: Option<&str>) -> Task {
        let mut t = Task::new(
            name,
            TaskSpec {
                service: "web".into(),
                slot: Some(0),
                host_name: host.map(str::to_owned),
                ..TaskSpec::default()
            },
        );
        t.status = Some(TaskStatus {
            phase: Some(phase),
            reason: reason.map(str::to_owned),
            exit_code: Some(3),
            restart_count: Some(2),
            ..TaskStatus::default()
        });
        t
    }

    fn complete() -> Condition {
        cond(
            "Progressing",
            ConditionStatus::False,
            "Complete",
            "3/3 up to date",
        )
    }

    #[test]
    fn ready_when_complete_and_all_replicas_ready() {
        let s = svc(2, 4, status(4, 2, vec![complete()]));
        let tasks = [
            task("web-0", Some("a"), TaskPhase::Running, None),
            task("web-1", Some("b"), TaskPhase::Running, None),
        ];
        assert_eq!(
            judge(Some(&s), &tasks, "web", 4),
            Progress::Ready("web: 2/2 ready (a: 1, b: 1), 4 restarts".into())
        );
    }

    #[test]
    fn an_old_generation_is_still_waiting() {
        let s = svc(2, 5, status(4, 2, vec![complete()]));
        assert!(matches!(
            judge(Some(&s), &[], "web", 5),
            Progress::Waiting(_)
        ));
    }

    #[test]
    fn unschedulable_says_why() {
        let s = svc(
            3,
            1,
            status(
                1,
                0,
                vec![cond(
                    "Schedulable",
                    ConditionStatus::False,
                    "Unschedulable",
                    "0/3 hosts: 3 insufficient memory",
                )],
            ),
        );
        let tasks = [task("web-0", None, TaskPhase::Pending, None)];
        assert_eq!(
            judge(Some(&s), &tasks, "web", 1),
            Progress::Waiting(
                "web: 0/3 ready (<unplaced>: 1), 2 restarts — 0/3 hosts: 3 insufficient memory"
                    .into()
            )
        );
    }

    #[test]
    fn task_reasons_show_when_stuck() {
        let s = svc(1, 1, status(1, 0, vec![]));
        let tasks = [task(
            "web-0",
            Some("a"),
            TaskPhase::Pending,
            Some("ImageNotFound"),
        )];
        let Progress::Waiting(line) = judge(Some(&s), &tasks, "web", 1) else {
            panic!("not waiting");
        };
        assert!(line.ends_with("— web-0 Pending ImageNotFound"), "{line}");
    }

    #[test]
    fn a_failed_task_fails_the_wait_with_its_reason() {
        let s = svc(1, 1, status(1, 0, vec![]));
        let tasks = [task(
            "crashing-0",
            Some("a"),
            TaskPhase::Failed,
            Some("MaxAttemptsReached"),
        )];
        let Progress::Failed(why) = judge(Some(&s), &tasks, "crashing", 1) else {
            panic!("not failed");
        };
        assert!(
            why.contains("task crashing-0 failed: MaxAttemptsReached, exit code 3"),
            "{why}"
        );
    }

    #[test]
    fn a_paused_update_and_a_deleted_service_fail() {
        let s = svc(
            1,
            2,
            status(
                2,
                0,
                vec![cond(
                    "Progressing",
                    ConditionStatus::True,
                    "UpdatePaused",
                    "0/1 tasks up to date; paused (failureAction Pause): web-0",
                )],
            ),
        );
        let Progress::Failed(why) = judge(Some(&s), &[], "web", 2) else {
            panic!("not failed");
        };
        assert!(why.contains("update paused: 0/1 tasks up to date"), "{why}");
        assert!(
            why.ends_with("(once the cause is fixed: shoal resume web; or shoal rollback web)"),
            "{why}"
        );
        assert!(matches!(judge(None, &[], "web", 1), Progress::Failed(_)));
    }

    #[test]
    fn a_rolled_back_update_fails_even_with_every_replica_ready() {
        for (st, reason, says) in [
            (
                ConditionStatus::True,
                "RollingBack",
                "update failed, rolling back",
            ),
            (ConditionStatus::False, "RolledBack", "update rolled back"),
            (ConditionStatus::True, "RollbackPaused", "rollback paused"),
        ] {
            let s = svc(
                1,
                2,
                status(
                    2,
                    1,
                    vec![cond("Progressing", st, reason, "1 of 1 new tasks failed")],
                ),
            );
            let Progress::Failed(why) = judge(Some(&s), &[], "web", 2) else {
                panic!("{reason}: not failed");
            };
            assert!(
                why.contains(&format!("{says}: 1 of 1 new tasks failed")),
                "{why}"
            );
        }
    }

    #[test]
    fn timeouts_accept_durations_and_seconds() {
        assert_eq!(parse_timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_timeout("soon").is_err());
    }
}
