//! `shoal top [SERVICE...]`: the CPU and memory use of running tasks.

use std::process::ExitCode;

use futures::StreamExt;
use kube::api::ListParams;
use shoal_crds::{Task, TaskPhase};

use crate::client::{Conn, ConnArgs, block_on, connect};
use crate::output::{Cell, Format, Table, colour_stdout};
use crate::view;

/// Show the CPU and memory use of services' running tasks
///
/// Like `docker stats --no-stream` or `kubectl top pod`: each running task
/// of the services (of every service in the namespace when none is named)
/// is measured by its host's engine — CPU over about the last second (1000m
/// is one core busy) and memory in use against the container's limit (the
/// host's memory when it has none). It takes about a second: the engine
/// reads twice. `-o json|yaml` prints the TaskStats objects; `-w` measures
/// again and again (tasks that start or end come and go) until Ctrl-C.
///
/// Examples:
///   shoal top                # every service in the namespace
///   shoal top web api
///   shoal top web -w         # like `docker stats`
///   shoal top web -o json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The services (default: all in the namespace).
    services: Vec<String>,
    /// Output format: yaml or json.
    #[arg(short, long, value_enum)]
    output: Option<Format>,
    /// Measure again every --interval until Ctrl-C (on a terminal, in
    /// place).
    #[arg(short, long)]
    watch: bool,
    /// Pause between measurements with --watch, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = parse_interval, requires = "watch")]
    interval: std::time::Duration,
    #[command(flatten)]
    conn: ConnArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(top(args))
}

/// Hosts measured at once.
const IN_FLIGHT: usize = 16;

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    shoal_crds::quantity::parse_duration(s).map_err(|e| e.to_string())
}

async fn top(args: Args) -> anyhow::Result<ExitCode> {
    if args.output == Some(Format::Wide) {
        anyhow::bail!("-o wide: top has no wider view; use -o yaml or -o json");
    }
    let conn = connect(&args.conn).await?;
    if !args.watch {
        return once(&conn, &args).await;
    }
    // On a terminal each round replaces the last; piped, rounds follow
    // one another, a blank line apart.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut first = true;
    loop {
        if terminal {
            print!("\x1b[2J\x1b[H");
        } else if !first {
            println!();
        }
        first = false;
        once(&conn, &args).await?;
        std::io::Write::flush(&mut std::io::stdout())?;
        tokio::time::sleep(args.interval).await;
    }
}

/// One measurement of the selected tasks, printed.
async fn once(conn: &Conn, args: &Args) -> anyhow::Result<ExitCode> {
    let selector = match args.services.as_slice() {
        [] => view::SERVICE_LABEL.to_string(),
        names => format!("{} in ({})", view::SERVICE_LABEL, names.join(",")),
    };
    let mut tasks: Vec<Task> = conn
        .namespaced::<Task>()
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| conn.explain(e))?
        .items
        .into_iter()
        .filter(|t| t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Running))
        .collect();
    view::sort_tasks(&mut tasks);
    if tasks.is_empty() {
        match args.services.as_slice() {
            [] => eprintln!("No running tasks in namespace {}.", conn.namespace),
            names => eprintln!("No running tasks of {}.", names.join(", ")),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let answers: Vec<(Task, anyhow::Result<serde_json::Value>)> =
        futures::stream::iter(tasks.into_iter().map(|t| async move {
            let sample = sample(conn, &t).await;
            (t, sample)
        }))
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let mut failed = false;
    let mut samples = Vec::new();
    for (task, answer) in answers {
        match answer {
            Ok(v) => samples.push(v),
            Err(e) => {
                failed = true;
                eprintln!(
                    "task {}: {e:#}",
                    task.metadata.name.as_deref().unwrap_or_default()
                );
            }
        }
    }
    match args.output {
        Some(f @ (Format::Json | Format::Yaml)) => {
            crate::output::print_objects(&samples, false, f)?;
        }
        _ => {
            let mut table = Table::new(["TASK", "HOST", "CPU", "MEMORY", "LIMIT"]);
            for s in &samples {
                table.row(row(s));
            }
            if !table.is_empty() {
                print!("{}", table.render(colour_stdout()));
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The task's `stats` subresource.
async fn sample(conn: &Conn, task: &Task) -> anyhow::Result<serde_json::Value> {
    let req = http::Request::get(conn.task_path(task, "stats")).body(Vec::new())?;
    conn.client.request(req).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 502 || s.code == 400 => anyhow::anyhow!(s.message),
        other => conn.explain(other),
    })
}

/// A table row of a TaskStats object.
fn row(s: &serde_json::Value) -> Vec<Cell> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let cpu = s["cpuMillicores"]
        .as_u64()
        .map_or_else(|| "-".to_string(), |m| format!("{m}m"));
    let limit = s["memoryLimitBytes"]
        .as_u64()
        .map_or_else(|| "-".to_string(), view::bytes);
    vec![
        text(&s["metadata"]["name"]).into(),
        text(&s["hostName"]).into(),
        cpu.into(),
        s["memoryBytes"]
            .as_u64()
            .map_or_else(String::new, view::bytes)
            .into(),
        limit.into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(s: &serde_json::Value) -> Vec<String> {
        let mut t = Table::new(["TASK", "HOST", "CPU", "MEMORY", "LIMIT"]);
        t.row(row(s));
        let out = t.render(false);
        let line = out.lines().nth(1).unwrap_or_default();
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn a_sample_reads_as_a_row() {
        let s = serde_json::json!({
            "metadata": {"name": "web-1-abcde"},
            "hostName": "node-1",
            "cpuMillicores": 250,
            "memoryBytes": 3 * 1024 * 1024 + 512 * 1024,
            "memoryLimitBytes": 128u64 << 20,
        });
        assert_eq!(
            cells(&s),
            ["web-1-abcde", "node-1", "250m", "3.5Mi", "128Mi"]
        );
        let unknown = serde_json::json!({
            "metadata": {"name": "t"}, "hostName": "h",
            "cpuMillicores": null, "memoryBytes": 0, "memoryLimitBytes": null,
        });
        assert_eq!(cells(&unknown), ["t", "h", "-", "0", "-"]);
    }
}
