//! `shoal events [-n NS | -A] [--for KIND/NAME] [-w] [-o wide|json|yaml]`,
//! and the Events section of `shoal describe`.

use std::fmt::Write as _;
use std::process::ExitCode;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, WatchEvent, WatchParams};

use crate::client::{Conn, ConnArgs, block_on, connect};
use crate::cmd::get::{Kind, parse_kind};
use crate::output::{Cell, Colour, Format, Table, colour_stdout, human_duration, serialize};

/// Show what happened: scheduling, starts, restarts, crashes, scaling
///
/// Events are recorded by Shoal's scheduler, orchestrator and dispatcher as
/// Kubernetes Events (`kubectl get events` shows the same): `Scheduled`,
/// `FailedScheduling`, `Started`, `Restarted`, `Unhealthy`, `OOMKilled`,
/// `Rejected`, `ImageNotFound`, `Scaled`... A repeat of the same event is
/// counted (`LAST SEEN` reads `5s (x3 over 2m)`) rather than listed again.
/// Events are kept for an hour, at most 1000 per namespace.
///
/// The list is sorted by when each event last happened, oldest first.
/// `-w` keeps watching and prints each new or repeated event.
///
/// Examples: `shoal events`, `shoal events --for service/web`,
/// `shoal events -A -w`, `shoal events -o yaml`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only the events of this object: service/NAME, task/NAME or host/NAME.
    #[arg(long = "for", value_name = "KIND/NAME", value_parser = parse_for)]
    for_object: Option<(Kind, String)>,
    /// Events of every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// After listing, watch and print each new or repeated event.
    #[arg(short, long)]
    watch: bool,
    /// Output format: wide (count, first seen, source, name), yaml or json.
    #[arg(short, long, value_enum)]
    output: Option<Format>,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Parses `service/web`, `task/web-0-x`, `host/h1` (kubectl spellings of
/// the kinds work too: `svc/web`).
fn parse_for(s: &str) -> Result<(Kind, String), String> {
    let Some((kind, name)) = s.split_once('/').filter(|(_, n)| !n.is_empty()) else {
        return Err(format!(
            "{s:?} is not KIND/NAME: use service/NAME, task/NAME or host/NAME"
        ));
    };
    Ok((parse_kind(kind)?, name.to_owned()))
}

/// The `involvedObject.kind` of a kind.
fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Services => "Service",
        Kind::Tasks => "Task",
        Kind::Hosts => "Host",
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(events(args))
}

/// When an event last happened (`lastTimestamp`, else `eventTime`, else
/// `firstTimestamp`, else its creation).
pub fn last_seen(e: &Event) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn first_seen(e: &Event) -> Option<Timestamp> {
    e.first_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| last_seen(e))
}

fn ago(t: Option<Timestamp>, now: Timestamp) -> String {
    t.map_or_else(
        || "<unknown>".into(),
        |t| human_duration(now.as_second() - t.as_second()),
    )
}

/// `5s`, or `5s (x3 over 2m)` for a repeated event, as kubectl prints it.
pub fn seen(e: &Event, now: Timestamp) -> String {
    let last = ago(last_seen(e), now);
    match e.count {
        Some(n) if n > 1 => format!("{last} (x{n} over {})", ago(first_seen(e), now)),
        _ => last,
    }
}

/// `service/web`, as kubectl's OBJECT column.
pub fn object(e: &Event) -> String {
    let o = &e.involved_object;
    format!(
        "{}/{}",
        o.kind.as_deref().unwrap_or_default().to_lowercase(),
        o.name.as_deref().unwrap_or_default()
    )
}

fn type_cell(e: &Event) -> Cell {
    let t = e.type_.clone().unwrap_or_default();
    let colour = if t == "Warning" {
        Colour::Yellow
    } else {
        Colour::Plain
    };
    Cell::coloured(t, colour)
}

/// Sorts events by when they last happened, oldest first (then by name).
pub fn sort(events: &mut [Event]) {
    events.sort_by(|a, b| {
        last_seen(a)
            .cmp(&last_seen(b))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

/// The table of `shoal events`: LAST SEEN, TYPE, REASON, OBJECT, MESSAGE
/// (NAMESPACE first with `-A`; COUNT, FIRST SEEN, SOURCE and NAME with
/// `-o wide`).
pub fn table(events: &[Event], namespaces: bool, wide: bool, now: Timestamp) -> Table {
    let mut header = Vec::new();
    if namespaces {
        header.push("NAMESPACE");
    }
    header.extend(["LAST SEEN", "TYPE", "REASON", "OBJECT"]);
    if wide {
        header.extend(["COUNT", "FIRST SEEN", "SOURCE", "NAME"]);
    }
    header.push("MESSAGE");
    let mut t = Table::new(header);
    for e in events {
        let mut row: Vec<Cell> = Vec::new();
        if namespaces {
            row.push(e.metadata.namespace.clone().unwrap_or_default().into());
        }
        row.push(seen(e, now).into());
        row.push(type_cell(e));
        row.push(e.reason.clone().unwrap_or_default().into());
        row.push(object(e).into());
        if wide {
            row.push(e.count.unwrap_or(1).to_string().into());
            row.push(ago(first_seen(e), now).into());
            row.push(source(e).into());
            row.push(e.metadata.name.clone().unwrap_or_default().into());
        }
        row.push(message(e).into());
        t.row(row);
    }
    t
}

fn source(e: &Event) -> String {
    e.source
        .as_ref()
        .and_then(|s| s.component.clone())
        .or_else(|| e.reporting_component.clone())
        .unwrap_or_default()
}

fn message(e: &Event) -> String {
    e.message
        .as_deref()
        .unwrap_or_default()
        .trim()
        .replace('\n', " ")
}

/// The `Events:` section of `shoal describe`, as kubectl prints it (with an
/// OBJECT column when the events are about several objects).
pub fn describe_section(out: &mut String, events: &[Event], with_object: bool) {
    if events.is_empty() {
        let _ = writeln!(out, "{:<20}<none>", "Events:");
        return;
    }
    let _ = writeln!(out, "Events:");
    let now = Timestamp::now();
    let mut header = vec!["TYPE", "REASON", "AGE", "FROM"];
    if with_object {
        header.push("OBJECT");
    }
    header.push("MESSAGE");
    let mut t = Table::new(header);
    for e in events {
        let mut row = vec![
            type_cell(e),
            e.reason.clone().unwrap_or_default().into(),
            seen(e, now).into(),
            source(e).into(),
        ];
        if with_object {
            row.push(object(e).into());
        }
        row.push(message(e).into());
        t.row(row);
    }
    for l in t.render(colour_stdout()).lines() {
        let _ = writeln!(out, "  {l}");
    }
}

/// The events about these objects of one kind in `namespace` (all
/// namespaces for `None`), sorted.
pub async fn about(
    conn: &Conn,
    namespace: Option<&str>,
    objects: &[(Kind, &str)],
) -> anyhow::Result<Vec<Event>> {
    let api: kube::Api<Event> = match namespace {
        Some(ns) => conn.in_namespace(ns),
        None => kube::Api::all(conn.client.clone()),
    };
    // One object: let the server filter; several: filter here.
    let lp = match objects {
        [(k, n)] => ListParams::default().fields(&format!(
            "involvedObject.kind={},involvedObject.name={n}",
            kind_name(*k)
        )),
        _ => ListParams::default(),
    };
    let mut items: Vec<Event> = api
        .list(&lp)
        .await
        .map_err(|e| conn.explain(e))?
        .items
        .into_iter()
        .filter(|e| {
            let o = &e.involved_object;
            objects.iter().any(|(k, n)| {
                o.kind.as_deref() == Some(kind_name(*k)) && o.name.as_deref() == Some(*n)
            })
        })
        .collect();
    sort(&mut items);
    Ok(items)
}

async fn events(args: Args) -> anyhow::Result<ExitCode> {
    let conn = connect(&args.conn).await?;
    // Events of Hosts (cluster-scoped) live in `default`, as in Kubernetes:
    // look for them everywhere.
    let all = args.all_namespaces || matches!(args.for_object, Some((Kind::Hosts, _)));
    let api: kube::Api<Event> = if all {
        kube::Api::all(conn.client.clone())
    } else {
        conn.namespaced()
    };
    let fields = args.for_object.as_ref().map(|(k, n)| {
        format!(
            "involvedObject.kind={},involvedObject.name={n}",
            kind_name(*k)
        )
    });
    let mut lp = ListParams::default();
    if let Some(f) = &fields {
        lp = lp.fields(f);
    }
    let list = api.list(&lp).await.map_err(|e| conn.explain(e))?;
    let version = list.metadata.resource_version.clone().unwrap_or_default();
    let mut items = list.items;
    sort(&mut items);
    let colour = colour_stdout();
    let wide = args.output == Some(Format::Wide);
    let namespaces = args.all_namespaces;
    match args.output {
        Some(f @ (Format::Json | Format::Yaml)) => {
            crate::output::print_objects(&items, false, f)?;
        }
        _ => {
            if items.is_empty() {
                if !args.watch {
                    let what = match (&args.for_object, all) {
                        (Some((k, n)), _) => format!(" for {}/{n}", kind_name(*k).to_lowercase()),
                        (None, true) => String::new(),
                        (None, false) => format!(" in namespace {}", conn.namespace),
                    };
                    eprintln!("No events{what}.");
                }
            } else {
                print!(
                    "{}",
                    table(&items, namespaces, wide, Timestamp::now()).render(colour)
                );
            }
        }
    }
    if !args.watch {
        return Ok(ExitCode::SUCCESS);
    }
    let mut wp = WatchParams::default();
    if let Some(f) = &fields {
        wp = wp.fields(f);
    }
    let mut printed_header = !items.is_empty();
    let mut stream = api
        .watch(&wp, &version)
        .await
        .map_err(|e| conn.explain(e))?
        .boxed();
    while let Some(ev) = stream.try_next().await.map_err(|e| conn.explain(e))? {
        let e = match ev {
            WatchEvent::Added(e) | WatchEvent::Modified(e) => e,
            // Expired or capped by the sweeper: nothing happened.
            WatchEvent::Deleted(_) | WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => anyhow::bail!("watch ended: {}", e.message),
        };
        match args.output {
            Some(f @ (Format::Json | Format::Yaml)) => {
                let s = serialize(&serde_json::to_value(&e)?, f)?;
                if f == Format::Yaml {
                    print!("---\n{s}");
                } else {
                    print!("{s}");
                }
            }
            _ => {
                let t = table(std::slice::from_ref(&e), namespaces, wide, Timestamp::now());
                if !printed_header {
                    printed_header = true;
                    print!("{}", t.render(colour));
                } else {
                    print!("{}", t.render_rows(colour));
                }
            }
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ev(name: &str, last: &str, count: i32) -> Event {
        Event {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: Some("Service".into()),
                name: Some("web".into()),
                ..Default::default()
            },
            reason: Some("Scaled".into()),
            message: Some("Scaled from 3 to 5 replicas".into()),
            type_: Some("Normal".into()),
            count: Some(count),
            first_timestamp: Some(Time("2026-01-01T00:00:00Z".parse().unwrap())),
            last_timestamp: Some(Time(last.parse().unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn rows_read_like_kubectl_and_sort_by_last_seen() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let mut evs = vec![
            ev("b", "2026-01-01T00:09:55Z", 3),
            ev("a", "2026-01-01T00:05:00Z", 1),
        ];
        sort(&mut evs);
        let text = table(&evs, false, false, now).render(false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
        );
        assert!(lines[1].starts_with("5m "), "{text}");
        assert!(lines[2].starts_with("5s (x3 over 10m) "), "{text}");
        assert!(lines[2].contains("service/web"), "{text}");
        // Columns are aligned: REASON starts at the same offset everywhere.
        let col = lines[0].find("REASON").unwrap();
        assert!(lines.iter().skip(1).all(|l| &l[col..col + 6] == "Scaled"));
    }

    #[test]
    fn for_parses_kind_and_name() {
        assert_eq!(
            parse_for("service/web").unwrap(),
            (Kind::Services, "web".into())
        );
        assert_eq!(parse_for("svc/web").unwrap().0, Kind::Services);
        assert_eq!(parse_for("host/h1").unwrap().0, Kind::Hosts);
        assert!(parse_for("web").is_err());
        assert!(parse_for("pod/web").is_err());
        assert!(parse_for("task/").is_err());
    }

    #[test]
    fn describe_section_lists_or_says_none() {
        let mut out = String::new();
        describe_section(&mut out, &[], false);
        assert_eq!(out.trim_end(), "Events:             <none>");
        let mut out = String::new();
        describe_section(&mut out, &[ev("a", "2026-01-01T00:05:00Z", 1)], true);
        assert!(out.starts_with("Events:\n  TYPE"), "{out}");
        assert!(out.contains("service/web"), "{out}");
    }
}
