//! Terminal output: aligned tables, kubectl-style ages, colours only on a
//! terminal, and the stable `-o json|yaml` forms for scripts.

use std::io::IsTerminal;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

/// `-o` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Extra columns (image, reason, address, ...).
    Wide,
    /// The objects as YAML (a `List` when there are several).
    Yaml,
    /// The objects as JSON (a `List` when there are several).
    Json,
}

/// Age of a timestamp like kubectl: `5s`, `3m`, `2h`, `4d` (`<unknown>` when absent).
pub fn age(ts: Option<&Time>) -> String {
    match ts {
        Some(t) => human_duration(Timestamp::now().as_second() - t.0.as_second()),
        None => "<unknown>".into(),
    }
}

/// Seconds as `5s`, `3m`, `2h`, `4d` (two units below a few of the larger
/// one, as kubectl does: `2m5s`, `3h4m`).
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        format!("{s}s")
    } else if s < 600 {
        let (m, r) = (s / 60, s % 60);
        if r == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{r}s")
        }
    } else if s < 3 * 3600 {
        format!("{}m", s / 60)
    } else if s < 8 * 3600 {
        let (h, m) = (s / 3600, (s % 3600) / 60);
        if m == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{m}m")
        }
    } else if s < 2 * 86400 {
        format!("{}h", s / 3600)
    } else if s < 8 * 86400 {
        let (d, h) = (s / 86400, (s % 86400) / 3600);
        if h == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{h}h")
        }
    } else if s < 2 * 365 * 86400 {
        format!("{}d", s / 86400)
    } else {
        format!("{}y", s / (365 * 86400))
    }
}

/// Whether to colour standard output (a terminal, and `NO_COLOR` unset).
pub fn colour_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Colours of table cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    /// No colour.
    Plain,
    /// Healthy states.
    Green,
    /// Transitional states.
    Yellow,
    /// Failures.
    Red,
}

impl Colour {
    fn code(self) -> &'static str {
        match self {
            Self::Plain => "",
            Self::Green => "\x1b[32m",
            Self::Yellow => "\x1b[33m",
            Self::Red => "\x1b[31m",
        }
    }
}

/// The colour of a state word (task phases, conditions, health).
pub fn state_colour(word: &str) -> Colour {
    match word {
        "Running" | "Healthy" | "True" | "Ready" | "Active" | "Succeeded" => Colour::Green,
        "Failed" | "Rejected" | "Unhealthy" | "Orphaned" | "False" | "NotReady" => Colour::Red,
        "Pending" | "Assigned" | "Starting" | "Unknown" | "Pause" | "Drain" => Colour::Yellow,
        _ => Colour::Plain,
    }
}

/// A cell: text and colour.
#[derive(Debug, Clone)]
pub struct Cell {
    text: String,
    colour: Colour,
}

impl Cell {
    /// A cell coloured by [`state_colour`].
    pub fn state(text: impl Into<String>) -> Cell {
        let text = text.into();
        let colour = state_colour(&text);
        Cell { text, colour }
    }
    /// A cell with an explicit colour.
    pub fn coloured(text: impl Into<String>, colour: Colour) -> Cell {
        Cell {
            text: text.into(),
            colour,
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell {
            text,
            colour: Colour::Plain,
        }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell::from(text.to_string())
    }
}

/// A table with aligned columns (three spaces apart, like kubectl).
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new<I, S>(header: I) -> Table
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Column widths over the header and every row.
    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                let n = c.text.chars().count();
                if i >= w.len() {
                    w.push(n);
                } else if w[i] < n {
                    w[i] = n;
                }
            }
        }
        w
    }

    fn line(cells: &[(String, Colour)], widths: &[usize], colour: bool) -> String {
        let mut out = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, (text, c)) in cells.iter().enumerate() {
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(text.chars().count());
            if colour && *c != Colour::Plain {
                out.push_str(c.code());
                out.push_str(text);
                out.push_str("\x1b[0m");
            } else {
                out.push_str(text);
            }
            if i != last {
                out.push_str(&" ".repeat(pad + 3));
            }
        }
        out.trim_end().to_string()
    }

    /// The header line (no colour).
    pub fn header_line(&self) -> String {
        let cells: Vec<(String, Colour)> = self
            .header
            .iter()
            .map(|h| (h.clone(), Colour::Plain))
            .collect();
        Self::line(&cells, &self.widths(), false)
    }

    /// The table as text lines (header first), coloured if `colour`.
    pub fn render(&self, colour: bool) -> String {
        let widths = self.widths();
        let mut out = self.header_line();
        out.push('\n');
        for r in &self.rows {
            let cells: Vec<(String, Colour)> =
                r.iter().map(|c| (c.text.clone(), c.colour)).collect();
            out.push_str(&Self::line(&cells, &widths, colour));
            out.push('\n');
        }
        out
    }

    /// The rows only (for watch updates), aligned to the header's widths
    /// and to their own.
    pub fn render_rows(&self, colour: bool) -> String {
        let widths = self.widths();
        let mut out = String::new();
        for r in &self.rows {
            let cells: Vec<(String, Colour)> =
                r.iter().map(|c| (c.text.clone(), c.colour)).collect();
            out.push_str(&Self::line(&cells, &widths, colour));
            out.push('\n');
        }
        out
    }
}

/// Prints objects as JSON or YAML: one object alone, several as a
/// Kubernetes `List` (what kubectl prints), so scripts get one stable shape.
/// Field ownership (`metadata.managedFields`) is left out, as kubectl does.
pub fn print_objects<T: Serialize>(
    items: &[T],
    single: bool,
    format: Format,
) -> anyhow::Result<()> {
    print_objects_with(items, single, format, false)
}

/// [`print_objects`], with `metadata.managedFields` if `managed_fields`.
pub fn print_objects_with<T: Serialize>(
    items: &[T],
    single: bool,
    format: Format,
    managed_fields: bool,
) -> anyhow::Result<()> {
    let mut objects = items
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    if !managed_fields {
        objects.iter_mut().for_each(without_managed_fields);
    }
    let value = if single && objects.len() == 1 {
        objects.remove(0)
    } else {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": { "resourceVersion": "" },
            "items": objects,
        })
    };
    print!("{}", serialize(&value, format)?);
    Ok(())
}

/// Drops `metadata.managedFields` (server-side apply's bookkeeping: long,
/// and rarely what a reader wants).
pub fn without_managed_fields(obj: &mut serde_json::Value) {
    if let Some(meta) = obj
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
    {
        meta.remove("managedFields");
    }
}

/// One value as JSON (pretty, newline-terminated) or YAML.
pub fn serialize(value: &serde_json::Value, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(value)?),
        Format::Yaml => {
            let s = serde_saphyr::to_string(value)?;
            if s.ends_with('\n') { s } else { s + "\n" }
        }
        Format::Wide => anyhow::bail!("wide is a table format"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_ownership_is_left_out_unless_asked_for() {
        let mut obj = serde_json::json!({"metadata": {"name": "web",
            "managedFields": [{"manager": "kubectl"}]}, "spec": {}});
        without_managed_fields(&mut obj);
        assert_eq!(
            obj,
            serde_json::json!({"metadata": {"name": "web"}, "spec": {}})
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(-3), "0s");
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(180), "3m");
        assert_eq!(human_duration(45 * 60), "45m");
        assert_eq!(human_duration(2 * 3600), "120m");
        assert_eq!(human_duration(3 * 3600 + 240), "3h4m");
        assert_eq!(human_duration(20 * 3600), "20h");
        assert_eq!(human_duration(4 * 86400), "4d");
        assert_eq!(human_duration(30 * 86400), "30d");
        assert_eq!(human_duration(800 * 86400), "2y");
    }

    #[test]
    fn tables_align_and_colour_only_when_asked() {
        let mut t = Table::new(["NAME", "PHASE", "AGE"]);
        t.row(vec!["web-0".into(), Cell::state("Running"), "5s".into()]);
        t.row(vec![
            "crashing-0".into(),
            Cell::state("Failed"),
            "2m".into(),
        ]);
        let plain = t.render(false);
        assert_eq!(
            plain,
            "NAME         PHASE     AGE\nweb-0        Running   5s\ncrashing-0   Failed    2m\n"
        );
        let coloured = t.render(true);
        assert!(coloured.contains("\x1b[32mRunning\x1b[0m"), "{coloured:?}");
        assert!(coloured.contains("\x1b[31mFailed\x1b[0m"), "{coloured:?}");
        // Colour codes do not break the alignment of what follows.
        let line = coloured.lines().nth(1).unwrap_or_default();
        assert!(line.ends_with("\x1b[0m   5s"), "{line:?}");
    }

    #[test]
    fn several_objects_are_a_list() {
        let v = serde_json::json!({"a": 1});
        let s = serialize(
            &serde_json::json!({"kind": "List", "items": [v]}),
            Format::Yaml,
        )
        .unwrap_or_default();
        assert!(s.contains("kind: List"), "{s}");
    }
}
