//! `shoal get services|tasks|hosts [NAME] [-o wide|yaml|json] [-w]`.

use std::process::ExitCode;

use futures::{StreamExt, TryStreamExt};
use kube::api::{ListParams, WatchEvent, WatchParams};
use shoal_crds::{Host, Service, Task};

use crate::client::{Conn, ConnArgs, block_on, connect};
use crate::output::{Format, colour_stdout, print_objects_with, serialize, without_managed_fields};
use crate::view;

/// List Services, Tasks or Hosts, or show one
///
/// Prints an aligned table (`-o wide` adds columns), or the objects
/// themselves with `-o json` / `-o yaml`: one object when NAME is given,
/// else a `List` — stable shapes for scripts. `-w` keeps watching and prints
/// a line (or an object) per change.
///
/// Examples: `shoal get services`, `shoal get tasks -l shoal.dev/service=web`,
/// `shoal get service web -o yaml`, `shoal get hosts -o wide`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to list: services (svc, ssvc), tasks (task, stask) or hosts (host, shost).
    #[arg(value_parser = parse_kind)]
    kind: Kind,
    /// Show only this object.
    name: Option<String>,
    /// Output format: wide (more columns), yaml or json.
    #[arg(short, long, value_enum)]
    output: Option<Format>,
    /// Only objects whose labels match this selector, e.g. `app=web`.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    selector: Option<String>,
    /// After listing, watch for changes and print each one.
    #[arg(short, long)]
    watch: bool,
    /// Services and tasks of every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// With -o json/yaml: keep `metadata.managedFields` (who owns which
    /// field, for server-side apply), which is left out by default.
    #[arg(long)]
    show_managed_fields: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

/// The three resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Services.
    Services,
    /// Tasks.
    Tasks,
    /// Hosts.
    Hosts,
}

/// Parses a resource name as kubectl users write it.
pub fn parse_kind(s: &str) -> Result<Kind, String> {
    match s.to_ascii_lowercase().as_str() {
        "services" | "service" | "svc" | "ssvc" | "services.shoal.dev" | "service.shoal.dev" => {
            Ok(Kind::Services)
        }
        "tasks" | "task" | "stask" | "tasks.shoal.dev" | "task.shoal.dev" => Ok(Kind::Tasks),
        "hosts" | "host" | "shost" | "hosts.shoal.dev" | "host.shoal.dev" => Ok(Kind::Hosts),
        _ => Err(format!(
            "unknown resource {s:?}: use services, tasks or hosts"
        )),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(get(args))
}

async fn get(args: Args) -> anyhow::Result<ExitCode> {
    let conn = connect(&args.conn).await?;
    match args.kind {
        Kind::Services => {
            let api = if args.all_namespaces {
                kube::Api::all(conn.client.clone())
            } else {
                conn.namespaced::<Service>()
            };
            list_and_watch(&conn, &api, &args, |items: &[Service], wide, _| {
                view::services_table(items, wide)
            })
            .await
        }
        Kind::Tasks => {
            let api = if args.all_namespaces {
                kube::Api::all(conn.client.clone())
            } else {
                conn.namespaced::<Task>()
            };
            list_and_watch(&conn, &api, &args, |items: &[Task], wide, _| {
                let mut items = items.to_vec();
                view::sort_tasks(&mut items);
                view::tasks_table(&items, true, wide)
            })
            .await
        }
        Kind::Hosts => {
            let api = conn.cluster::<Host>();
            let tasks: kube::Api<Task> = kube::Api::all(conn.client.clone());
            let all = tasks
                .list(&ListParams::default())
                .await
                .map_err(|e| conn.explain(e))?
                .items;
            let per_host = view::tasks_per_host(&all);
            list_and_watch(&conn, &api, &args, move |items: &[Host], wide, _| {
                view::hosts_table(items, &per_host, wide)
            })
            .await
        }
    }
}

async fn list_and_watch<K, F>(
    conn: &Conn,
    api: &kube::Api<K>,
    args: &Args,
    table: F,
) -> anyhow::Result<ExitCode>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + 'static,
    F: Fn(&[K], bool, ()) -> crate::output::Table,
{
    let mut lp = ListParams::default();
    if let Some(s) = &args.selector {
        lp = lp.labels(s);
    }
    if let Some(n) = &args.name {
        lp = lp.fields(&format!("metadata.name={n}"));
    }
    let list = api.list(&lp).await.map_err(|e| conn.explain(e))?;
    let version = list.metadata.resource_version.clone().unwrap_or_default();
    let items = list.items;
    if let Some(n) = &args.name
        && items.is_empty()
        && !args.watch
    {
        anyhow::bail!("{} {n:?} not found", kind_word(args.kind));
    }
    let colour = colour_stdout();
    let wide = args.output == Some(Format::Wide);
    match args.output {
        Some(f @ (Format::Json | Format::Yaml)) => {
            print_objects_with(&items, args.name.is_some(), f, args.show_managed_fields)?;
        }
        _ => {
            let t = table(&items, wide, ());
            if t.is_empty() && !args.watch {
                eprintln!("No {} found.", plural(args.kind));
            } else {
                print!("{}", t.render(colour));
            }
        }
    }
    if !args.watch {
        return Ok(ExitCode::SUCCESS);
    }
    let mut wp = WatchParams::default();
    if let Some(s) = &args.selector {
        wp = wp.labels(s);
    }
    if let Some(n) = &args.name {
        wp = wp.fields(&format!("metadata.name={n}"));
    }
    let stream = api
        .watch(&wp, &version)
        .await
        .map_err(|e| conn.explain(e))?;
    let mut stream = stream.boxed();
    while let Some(ev) = stream.try_next().await.map_err(|e| conn.explain(e))? {
        let obj = match ev {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => anyhow::bail!("watch ended: {}", e.message),
        };
        match args.output {
            Some(f @ (Format::Json | Format::Yaml)) => {
                let mut v = serde_json::to_value(&obj)?;
                if !args.show_managed_fields {
                    without_managed_fields(&mut v);
                }
                let s = serialize(&v, f)?;
                if f == Format::Yaml {
                    print!("---\n{s}");
                } else {
                    print!("{s}");
                }
            }
            _ => print!("{}", table(&[obj], wide, ()).render_rows(colour)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn kind_word(k: Kind) -> &'static str {
    match k {
        Kind::Services => "service",
        Kind::Tasks => "task",
        Kind::Hosts => "host",
    }
}

fn plural(k: Kind) -> &'static str {
    match k {
        Kind::Services => "services",
        Kind::Tasks => "tasks",
        Kind::Hosts => "hosts",
    }
}
