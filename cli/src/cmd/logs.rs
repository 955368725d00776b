//! `shoal logs SERVICE|TASK`: the output of a service's replicas, merged.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures::{AsyncBufReadExt, StreamExt};
use kube::api::ListParams;
use kube::runtime::watcher;
use shoal_crds::{Service, Task};
use tokio::sync::watch;

use crate::client::{Conn, ConnArgs, block_on, connect};
use crate::output::colour_stdout;
use crate::view;

/// Print the output of a service's replicas, or of one task
///
/// Lines of every replica are merged and prefixed with `SERVICE.SLOT` (the
/// host name for global services). Without `-f` they are sorted by time;
/// with `-f` they are printed as they come, and each slot is followed across
/// container restarts and task replacements until the service is deleted or
/// you press Ctrl-C. Following one task (by its name) ends once the task has
/// ended for good (Succeeded, Failed, shut down) and its last line is shown.
///
/// When a task's host cannot be reached, the lines that can be read are still
/// shown, and a note on standard error names the host and the slots missing.
///
/// Examples:
///   shoal logs web                  # every replica, all lines so far
///   shoal logs web -f --tail 10     # follow, starting with the last 10 lines
///   shoal logs web.2 --since 5m     # one slot, the last five minutes
///   shoal logs web-2-x7k2p --timestamps
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A service, a slot of one (`web.2`), or a task name.
    target: String,
    /// Keep printing new lines, across restarts and replacements.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines of each task (default: all).
    #[arg(long, value_name = "N")]
    tail: Option<u32>,
    /// Only lines newer than this (e.g. 30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    since: Option<Duration>,
    /// Show each line's time (RFC 3339, as the engine recorded it).
    #[arg(short = 't', long)]
    timestamps: bool,
    /// Do not prefix lines with SERVICE.SLOT.
    #[arg(long)]
    no_prefix: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

fn parse_since(s: &str) -> Result<Duration, String> {
    let d = shoal_crds::quantity::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(logs(args))
}

/// What to read: a service (maybe one slot of it) or a single task.
#[derive(Debug, Clone)]
pub(crate) enum Selection {
    Service { name: String, slot: Option<String> },
    Task { name: String },
}

/// The key of a task's slot: its slot number, or its host for global tasks.
fn slot_key(t: &Task) -> String {
    match t.spec.slot {
        Some(s) => s.to_string(),
        None => t
            .spec
            .host_name
            .clone()
            .or_else(|| t.metadata.name.clone())
            .unwrap_or_default(),
    }
}

fn prefix_of(t: &Task) -> String {
    format!("{}.{}", t.spec.service, slot_key(t))
}

pub(crate) async fn resolve(conn: &Conn, target: &str) -> anyhow::Result<Selection> {
    let services = conn.namespaced::<Service>();
    if services
        .get_opt(target)
        .await
        .map_err(|e| conn.explain(e))?
        .is_some()
    {
        return Ok(Selection::Service {
            name: target.to_owned(),
            slot: None,
        });
    }
    if conn
        .namespaced::<Task>()
        .get_opt(target)
        .await
        .map_err(|e| conn.explain(e))?
        .is_some()
    {
        return Ok(Selection::Task {
            name: target.to_owned(),
        });
    }
    if let Some((svc, slot)) = target.rsplit_once('.')
        && !slot.is_empty()
        && services
            .get_opt(svc)
            .await
            .map_err(|e| conn.explain(e))?
            .is_some()
    {
        return Ok(Selection::Service {
            name: svc.to_owned(),
            slot: Some(slot.to_owned()),
        });
    }
    anyhow::bail!(
        "no service, slot or task named {target:?} in namespace {}",
        conn.namespace
    )
}

pub(crate) fn selected(sel: &Selection, t: &Task) -> bool {
    match sel {
        Selection::Service { name, slot } => {
            &t.spec.service == name && slot.as_ref().is_none_or(|s| *s == slot_key(t))
        }
        Selection::Task { name } => t.metadata.name.as_ref() == Some(name),
    }
}

pub(crate) fn list_params(sel: &Selection) -> ListParams {
    match sel {
        Selection::Service { name, .. } => {
            ListParams::default().labels(&format!("{}={name}", view::SERVICE_LABEL))
        }
        Selection::Task { name } => ListParams::default().fields(&format!("metadata.name={name}")),
    }
}

/// Options of one log request.
#[derive(Debug, Clone, Default)]
struct Request {
    follow: bool,
    tail: Option<u32>,
    since: Option<SystemTime>,
}

/// Why a task's log could not be opened.
#[derive(Debug)]
enum OpenError {
    /// The task's host cannot be reached (502).
    Unreachable(String),
    /// Nothing to read there (no container, not placed: 400/404).
    Nothing(String),
    /// The API itself failed.
    Api(anyhow::Error),
}

/// The query of a log request; always with timestamps (for merging and
/// resuming; they are shown only with --timestamps).
fn log_query(req: &Request) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("timestamps", "true");
    if req.follow {
        q.append_pair("follow", "true");
    }
    if let Some(n) = req.tail {
        q.append_pair("tailLines", &n.to_string());
    }
    if let Some(t) = req.since.and_then(|t| jiff::Timestamp::try_from(t).ok()) {
        q.append_pair("sinceTime", &format!("{t:.9}"));
    }
    q.finish()
}

async fn open(
    conn: &Conn,
    task: &Task,
    req: &Request,
) -> Result<impl futures::AsyncBufRead + use<>, OpenError> {
    let url = format!("{}?{}", conn.task_path(task, "log"), log_query(req));
    let http_req = http::Request::get(url)
        .body(Vec::new())
        .map_err(|e| OpenError::Api(e.into()))?;
    conn.client
        .request_stream(http_req)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 502 => OpenError::Unreachable(s.message),
            kube::Error::Api(s) if s.code == 400 || s.code == 404 => OpenError::Nothing(s.message),
            other => OpenError::Api(conn.explain(other)),
        })
}

/// One line read: its time, and its text without the timestamp (the API's
/// `timestamps` format is the engine's).
fn split_line(raw: &[u8]) -> (Option<SystemTime>, &[u8]) {
    shoal_agent::engine::split_log_frame(raw)
}

/// Prints lines with prefixes and colours; shared by the followers.
#[derive(Debug)]
struct Printer {
    width: usize,
    colour: bool,
    prefix: bool,
    timestamps: bool,
    out: Mutex<std::io::Stdout>,
}

const PALETTE: [&str; 6] = [
    "\x1b[36m", "\x1b[33m", "\x1b[32m", "\x1b[35m", "\x1b[34m", "\x1b[31m",
];

impl Printer {
    fn line(&self, prefix: &str, time: Option<SystemTime>, text: &[u8]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(text.len() + prefix.len() + 40);
        if self.prefix {
            if self.colour {
                let i = prefix
                    .bytes()
                    .fold(0usize, |h, b| h.wrapping_mul(31) + b as usize);
                buf.extend_from_slice(PALETTE[i % PALETTE.len()].as_bytes());
            }
            buf.extend_from_slice(format!("{prefix:<w$} |", w = self.width).as_bytes());
            if self.colour {
                buf.extend_from_slice(b"\x1b[0m");
            }
            buf.push(b' ');
        }
        if self.timestamps
            && let Some(t) = time.and_then(|t| jiff::Timestamp::try_from(t).ok())
        {
            buf.extend_from_slice(format!("{t:.9} ").as_bytes());
        }
        buf.extend_from_slice(text);
        if !text.ends_with(b"\n") {
            buf.push(b'\n');
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.write_all(&buf)?;
        out.flush()
    }
}

async fn logs(args: Args) -> anyhow::Result<ExitCode> {
    let conn = connect(&args.conn).await?;
    let sel = resolve(&conn, &args.target).await?;
    let since = args.since.map(|d| SystemTime::now() - d);
    let first = Request {
        follow: args.follow,
        tail: args.tail,
        since,
    };
    let tasks: Vec<Task> = conn
        .namespaced::<Task>()
        .list(&list_params(&sel))
        .await
        .map_err(|e| conn.explain(e))?
        .items
        .into_iter()
        .filter(|t| selected(&sel, t))
        .collect();
    if let Selection::Service {
        name,
        slot: Some(slot),
    } = &sel
        && tasks.is_empty()
    {
        anyhow::bail!("service {name:?} has no slot {slot:?} (see `shoal ps {name}`)");
    }
    let width = tasks.iter().map(|t| prefix_of(t).len()).max().unwrap_or(0);
    let printer = Arc::new(Printer {
        width,
        colour: colour_stdout(),
        prefix: !args.no_prefix,
        timestamps: args.timestamps,
        out: Mutex::new(std::io::stdout()),
    });
    if args.follow {
        follow(conn, sel, first, printer).await
    } else {
        once(&conn, tasks, &first, &printer).await
    }
}

fn note_unreachable(what: &[String], message: &str) {
    eprintln!("note: {message}; not shown: {}", what.join(", "));
}

/// Reads every task's lines up to now and prints them sorted by time.
async fn once(
    conn: &Conn,
    mut tasks: Vec<Task>,
    req: &Request,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    view::sort_tasks(&mut tasks);
    // Tasks that ever had a container; ended ones may have lost it.
    tasks.retain(|t| t.status.as_ref().is_some_and(|s| s.container_id.is_some()));
    if tasks.is_empty() {
        eprintln!("No output yet: no task has started a container.");
        return Ok(ExitCode::SUCCESS);
    }
    let reads = tasks.iter().map(|t| async move {
        let res = match open(conn, t, req).await {
            Ok(r) => read_all(r).await.map_err(|e| OpenError::Api(e.into())),
            Err(e) => Err(e),
        };
        (t, res)
    });
    let results = futures::future::join_all(reads).await;
    let mut lines: Vec<(Option<SystemTime>, String, Vec<u8>)> = Vec::new();
    let mut unreachable: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (t, res) in results {
        match res {
            Ok(ls) => {
                let p = prefix_of(t);
                for raw in ls {
                    let (time, text) = split_line(&raw);
                    lines.push((time, p.clone(), text.to_vec()));
                }
            }
            Err(OpenError::Unreachable(m)) => unreachable.entry(m).or_default().push(format!(
                "{} (task {})",
                prefix_of(t),
                t.metadata.name.as_deref().unwrap_or("?")
            )),
            // A task that ended and whose container is gone: nothing to show.
            Err(OpenError::Nothing(m)) if !view::is_live(t) => {
                tracing::debug!(task = ?t.metadata.name, "{m}");
            }
            Err(OpenError::Nothing(m)) => eprintln!("note: {}: {m}", prefix_of(t)),
            Err(OpenError::Api(e)) => return Err(e),
        }
    }
    // Stable: lines of one task keep their order when times tie.
    lines.sort_by_key(|(time, _, _)| *time);
    for (time, prefix, text) in &lines {
        if let Err(e) = printer.line(prefix, *time, text) {
            return quiet_on_broken_pipe(e);
        }
    }
    for (m, prefixes) in &unreachable {
        note_unreachable(prefixes, m);
    }
    Ok(ExitCode::SUCCESS)
}

fn quiet_on_broken_pipe(e: std::io::Error) -> anyhow::Result<ExitCode> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return Ok(ExitCode::SUCCESS);
    }
    Err(anyhow::Error::new(e).context("writing to standard output"))
}

async fn read_all(mut r: impl futures::AsyncBufRead + Unpin) -> std::io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let mut buf = Vec::new();
        if r.read_until(b'\n', &mut buf).await? == 0 {
            return Ok(out);
        }
        out.push(buf);
    }
}

/// The current task of each followed slot, kept by a watch on the tasks.
type Slots = BTreeMap<String, Task>;

/// The task a slot's follower reads: the newest one meant to run, else the
/// newest.
fn current_per_slot(tasks: &BTreeMap<String, Task>, sel: &Selection) -> Slots {
    let mut slots: Slots = BTreeMap::new();
    for t in tasks.values().filter(|t| selected(sel, t)) {
        let key = slot_key(t);
        let better = match slots.get(&key) {
            None => true,
            Some(cur) => {
                let rank = |t: &Task| {
                    (
                        view::is_live(t),
                        t.metadata.creation_timestamp.as_ref().map(|c| c.0),
                    )
                };
                rank(t) > rank(cur)
            }
        };
        if better {
            slots.insert(key, t.clone());
        }
    }
    slots
}

/// When the task's current container run started (changes on a restart).
fn run_started(t: &Task) -> Option<SystemTime> {
    t.status
        .as_ref()
        .and_then(|s| s.started_at.as_ref())
        .map(|s| SystemTime::from(s.0))
}

pub(crate) fn is_running(t: &Task) -> bool {
    t.status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|p| p == shoal_crds::TaskPhase::Running)
}

/// Follows the selection: a watch keeps the current task of every slot, and
/// one follower per slot reads it, again after every restart.
async fn follow(
    conn: Conn,
    sel: Selection,
    first: Request,
    printer: Arc<Printer>,
) -> anyhow::Result<ExitCode> {
    let api = conn.namespaced::<Task>();
    let cfg = match &sel {
        Selection::Service { name, .. } => {
            watcher::Config::default().labels(&format!("{}={name}", view::SERVICE_LABEL))
        }
        Selection::Task { name } => {
            watcher::Config::default().fields(&format!("metadata.name={name}"))
        }
    };
    let (slots_tx, slots_rx) = watch::channel::<Option<Slots>>(None);
    let sel_w = sel.clone();
    let mut events = watcher(api, cfg).boxed();
    let watch_task = tokio::spawn(async move {
        let mut all: BTreeMap<String, Task> = BTreeMap::new();
        let mut init: BTreeMap<String, Task> = BTreeMap::new();
        let mut listed = false;
        while let Some(ev) = events.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::debug!(error = %e, "task watch (retrying)");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let uid = |t: &Task| t.metadata.uid.clone().unwrap_or_default();
            match ev {
                watcher::Event::Init => init.clear(),
                watcher::Event::InitApply(t) => {
                    init.insert(uid(&t), t);
                }
                watcher::Event::InitDone => {
                    all = std::mem::take(&mut init);
                    listed = true;
                }
                watcher::Event::Apply(t) => {
                    all.insert(uid(&t), t);
                }
                watcher::Event::Delete(t) => {
                    all.remove(&uid(&t));
                }
            }
            if listed && slots_tx.send(Some(current_per_slot(&all, &sel_w))).is_err() {
                return;
            }
        }
    });
    let mut rx = slots_rx.clone();
    let mut started: HashSet<String> = HashSet::new();
    let mut followers = tokio::task::JoinSet::new();
    let mut seen_any = false;
    // The slots of the first listing (they get the user's --tail/--since).
    let mut first_snapshot: HashSet<String> = HashSet::new();
    // One task by name: its follower ends with the task, and so does this.
    let one_task = matches!(sel, Selection::Task { .. });
    loop {
        let keys: Vec<String> = match &*rx.borrow_and_update() {
            None => Vec::new(),
            Some(slots) => slots.keys().cloned().collect(),
        };
        for key in keys {
            if started.insert(key.clone()) {
                let conn = conn.clone();
                let printer = printer.clone();
                let rx = slots_rx.clone();
                // A slot that appears while following (a scale-up, a slot
                // given up and filled again) is read from its start: all of
                // it is newer than the command.
                let first = if seen_any && !first_snapshot.contains(&key) {
                    Request {
                        follow: true,
                        ..Request::default()
                    }
                } else {
                    first.clone()
                };
                let end = if one_task {
                    End::WithTheTask
                } else {
                    End::WithTheSlot
                };
                followers.spawn(async move {
                    let r = follow_slot(conn, key.clone(), rx, first, printer, end).await;
                    (key, r)
                });
            }
        }
        if !seen_any && !started.is_empty() {
            seen_any = true;
            first_snapshot = started.clone();
        }
        let gone = rx.borrow().as_ref().is_some_and(|s| s.is_empty());
        if (gone || one_task) && seen_any && followers.is_empty() {
            break;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            Some(done) = followers.join_next(), if !followers.is_empty() => {
                match done {
                    Ok((_, Err(e))) => {
                        watch_task.abort();
                        return quiet_on_broken_pipe_any(e);
                    }
                    // The slot went away: if it comes back, follow it again.
                    Ok((key, Ok(()))) => {
                        if !one_task {
                            started.remove(&key);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "a follower ended"),
                }
            }
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                break;
            }
        }
    }
    watch_task.abort();
    followers.abort_all();
    Ok(ExitCode::SUCCESS)
}

fn quiet_on_broken_pipe_any(e: anyhow::Error) -> anyhow::Result<ExitCode> {
    match e.downcast::<std::io::Error>() {
        Ok(io) => quiet_on_broken_pipe(io),
        Err(e) => Err(e),
    }
}

/// When a slot's follower stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// When the slot goes away (a service: the slot may get a new task).
    WithTheSlot,
    /// Also when the task has ended for good and its last run was read.
    WithTheTask,
}

/// Follows one slot until it goes away: read its current task; when the
/// stream ends (the container stopped), wait for the next run — a restart
/// or a replacement — and read on from the last line seen.
async fn follow_slot(
    conn: Conn,
    key: String,
    mut slots: watch::Receiver<Option<Slots>>,
    first: Request,
    printer: Arc<Printer>,
    end: End,
) -> anyhow::Result<()> {
    let mut last_time: Option<SystemTime> = None;
    // (task uid, run start) already read to its end.
    let mut done_run: Option<(String, Option<SystemTime>)> = None;
    let mut noted_unreachable = false;
    let mut first_read = true;
    let mut ended_at = std::time::Instant::now();
    loop {
        // The slot's task, once it has a run not read yet.
        let task = loop {
            let cur = match &*slots.borrow_and_update() {
                None => None,
                Some(s) => match s.get(&key) {
                    Some(t) => Some(t.clone()),
                    None => return Ok(()),
                },
            };
            if let Some(t) = cur {
                let has_container = t.status.as_ref().is_some_and(|s| s.container_id.is_some());
                let run = (t.metadata.uid.clone().unwrap_or_default(), run_started(&t));
                // A new run; or the same one still running well after its
                // stream ended (the stream broke, not the container).
                let fresh = done_run.as_ref() != Some(&run)
                    || (is_running(&t) && ended_at.elapsed() > Duration::from_secs(2));
                // First read: whatever the container holds; later, only a
                // new run that is running.
                if has_container && fresh && (first_read || is_running(&t)) {
                    break t;
                }
                // Ended for good, and its last run read (or it never ran).
                if end == End::WithTheTask
                    && !view::is_live(&t)
                    && (!has_container || (!first_read && !fresh))
                {
                    return Ok(());
                }
            }
            tokio::select! {
                r = slots.changed() => if r.is_err() { return Ok(()) },
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        };
        let prefix = prefix_of(&task);
        let req = if first_read {
            first.clone()
        } else {
            Request {
                follow: true,
                tail: None,
                // From just after the last line seen, or the run's start.
                since: match (last_time, run_started(&task)) {
                    (Some(l), Some(s)) => Some(std::cmp::max(l + Duration::from_nanos(1), s)),
                    (Some(l), None) => Some(l + Duration::from_nanos(1)),
                    (None, s) => s,
                },
            }
        };
        let run = (
            task.metadata.uid.clone().unwrap_or_default(),
            run_started(&task),
        );
        match open(&conn, &task, &req).await {
            Ok(mut r) => {
                if noted_unreachable {
                    eprintln!("note: {prefix}: its host answers again");
                    noted_unreachable = false;
                }
                first_read = false;
                loop {
                    let mut buf = Vec::new();
                    match r.read_until(b'\n', &mut buf).await {
                        Ok(0) => break,
                        Ok(_) => {
                            let (time, text) = split_line(&buf);
                            if time.is_some() {
                                last_time = time;
                            }
                            printer.line(&prefix, time, text)?;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "log stream broke");
                            break;
                        }
                    }
                }
                done_run = Some(run);
                ended_at = std::time::Instant::now();
            }
            Err(OpenError::Unreachable(m)) => {
                if !noted_unreachable {
                    let what = format!(
                        "{prefix} (task {}) until it answers again",
                        task.metadata.name.as_deref().unwrap_or("?")
                    );
                    note_unreachable(&[what], &m);
                    noted_unreachable = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(OpenError::Nothing(m)) => {
                tracing::debug!(%prefix, "{m}");
                first_read = false;
                done_run = Some(run);
                ended_at = std::time::Instant::now();
            }
            Err(OpenError::Api(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn splits_the_timestamp_from_the_text() {
        let (t, text) = split_line(b"2026-11-24T19:30:00.000000005Z hello world\n");
        assert_eq!(text, b"hello world\n");
        let d = t.unwrap().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(d.subsec_nanos(), 5);
        assert_eq!(split_line(b"plain line\n"), (None, &b"plain line\n"[..]));
    }

    #[test]
    fn since_takes_durations_and_refuses_zero() {
        assert_eq!(parse_since("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_since("0s").is_err());
        assert!(parse_since("soon").is_err());
    }
}
