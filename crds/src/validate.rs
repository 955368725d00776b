//! The one validation entry point every front door uses (API server, CLI,
//! operator): [`validate`] takes an object as written (JSON value, e.g. parsed
//! from YAML) and returns the typed resource or every problem found, each
//! naming the field path and the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kube::core::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::labels::{
    dns_label_error, dns_subdomain_error, label_key_error, label_value_error, selector_errors,
};
use crate::quantity::{
    ByteQuantity, CpuQuantity, DurationValue, parse_bytes, parse_cpu, parse_duration,
};
use crate::{
    API_VERSION, ContainerTemplate, HealthCheck, Host, MountType, Placement, Protocol, Resources,
    RestartPolicy, Service, ServiceMode, Task, UpdateConfig,
};

/// One problem: the field's path (`spec.template.ports[1].hostPort`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, in `a.b[1].c` form; `""` for the whole object.
    pub path: String,
    /// Why the value is refused, for a person.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one object. Validation errors are fatal: sending
/// the same object again fails the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// Paths of the errors, in order (handy in tests and for API causes).
    pub fn paths(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.path.as_str()).collect()
    }
    /// Always false: the input itself is wrong.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A validated resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Validated {
    /// A Service.
    Service(Box<Service>),
    /// A Task.
    Task(Box<Task>),
    /// A Host.
    Host(Box<Host>),
}

/// Validates one object as written: `apiVersion` and `kind`, unknown fields,
/// types, and every rule of the resource model. Returns the typed resource,
/// or every problem with its field path.
pub fn validate(obj: &Value) -> Result<Validated, ValidationErrors> {
    let mut c = Checker::default();
    let Some(map) = obj.as_object() else {
        c.err(
            "",
            "must be an object with apiVersion, kind, metadata and spec",
        );
        return Err(c.finish_err());
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        Some(other) => c.err(
            "apiVersion",
            format!("{other:?} is not served: use {API_VERSION:?}"),
        ),
        None => c.err("apiVersion", format!("required: {API_VERSION:?}")),
    }
    let out = match kind {
        "Service" => typed::<Service>(obj, &mut c).map(|s| {
            check_service(&s, &mut c);
            Validated::Service(Box::new(s))
        }),
        "Task" => typed::<Task>(obj, &mut c).map(|t| {
            check_task(&t, &mut c);
            Validated::Task(Box::new(t))
        }),
        "Host" => typed::<Host>(obj, &mut c).map(|h| {
            check_meta(&h.metadata, false, &mut c);
            Validated::Host(Box::new(h))
        }),
        "" => {
            c.err("kind", "required: one of Service, Task, Host");
            None
        }
        other => {
            c.err(
                "kind",
                format!("{other:?} is not a kind of {API_VERSION} (Service, Task, Host)"),
            );
            None
        }
    };
    match out {
        Some(v) if c.errs.is_empty() => Ok(v),
        _ => Err(c.finish_err()),
    }
}

/// Validates a Service that is already typed (e.g. built in code).
pub fn validate_service(svc: &Service) -> Result<(), ValidationErrors> {
    let mut c = Checker::default();
    check_service(svc, &mut c);
    c.finish()
}

/// Validates a container template on its own; paths start at `at`.
pub fn validate_template(t: &ContainerTemplate, at: &str) -> Result<(), ValidationErrors> {
    let mut c = Checker::default();
    check_template(t, at, &mut c);
    c.finish()
}

#[derive(Default)]
struct Checker {
    errs: Vec<FieldError>,
}

impl Checker {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errs.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
    fn finish(self) -> Result<(), ValidationErrors> {
        if self.errs.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.errs))
        }
    }
    fn finish_err(self) -> ValidationErrors {
        ValidationErrors(self.errs)
    }
    fn cpu(&mut self, q: Option<&CpuQuantity>, path: &str) -> Option<u64> {
        let q = q?;
        parse_cpu(q.as_str()).map_err(|e| self.err(path, e.0)).ok()
    }
    fn bytes(&mut self, q: Option<&ByteQuantity>, path: &str) -> Option<u64> {
        let q = q?;
        parse_bytes(q.as_str())
            .map_err(|e| self.err(path, e.0))
            .ok()
    }
    fn duration(&mut self, d: Option<&DurationValue>, path: &str) -> Option<std::time::Duration> {
        let d = d?;
        parse_duration(d.as_str())
            .map_err(|e| self.err(path, e.0))
            .ok()
    }
}

fn is_ident(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn push_key(path: &mut String, key: &str) {
    if is_ident(key) {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push_str(&format!("[{key:?}]"));
    }
}

fn ignored_path(p: &serde_ignored::Path<'_>, out: &mut String) {
    use serde_ignored::Path;
    match p {
        Path::Root => {}
        Path::Seq { parent, index } => {
            ignored_path(parent, out);
            out.push_str(&format!("[{index}]"));
        }
        Path::Map { parent, key } => {
            ignored_path(parent, out);
            push_key(out, key);
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent, out),
    }
}

/// Deserializes with unknown fields and type errors reported by path.
fn typed<T: DeserializeOwned>(obj: &Value, c: &mut Checker) -> Option<T> {
    // apiVersion and kind were checked by the caller; the derived types
    // ignore them, so take them out before looking for unknown fields.
    let mut obj = obj.clone();
    if let Some(m) = obj.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
    }
    let obj = &obj;
    let mut unknown = Vec::new();
    let mut on_unknown = |p: serde_ignored::Path<'_>| {
        let mut s = String::new();
        ignored_path(&p, &mut s);
        unknown.push(s);
    };
    let de = serde_ignored::Deserializer::new(obj, &mut on_unknown);
    let res: Result<T, _> = serde_path_to_error::deserialize(de);
    let value = match res {
        Ok(v) => Some(v),
        Err(e) => {
            let mut path = String::new();
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Seq { index } => {
                        path.push_str(&format!("[{index}]"))
                    }
                    serde_path_to_error::Segment::Map { key } => push_key(&mut path, key),
                    serde_path_to_error::Segment::Enum { .. }
                    | serde_path_to_error::Segment::Unknown => {}
                }
            }
            let msg = e.into_inner().to_string();
            match msg
                .strip_prefix("missing field `")
                .and_then(|m| m.split_once('`'))
            {
                Some((field, _)) => {
                    push_key(&mut path, field);
                    c.err(path, "required");
                }
                None => c.err(path, msg),
            }
            None
        }
    };
    for path in unknown {
        // `status` is a known field (what a user copies back from `get -o
        // yaml` passes); anything the types do not know is refused.
        c.err(path, "unknown field");
    }
    value
}

fn check_meta(meta: &ObjectMeta, namespaced: bool, c: &mut Checker) {
    match meta.name.as_deref() {
        None | Some("") => c.err("metadata.name", "required"),
        Some(n) => {
            let e = if namespaced {
                dns_label_error(n, 63)
            } else {
                dns_subdomain_error(n)
            };
            if let Some(e) = e {
                c.err("metadata.name", e);
            }
        }
    }
    if let Some(ns) = meta.namespace.as_deref() {
        if !namespaced {
            c.err(
                "metadata.namespace",
                "must not be set: this kind is cluster-scoped",
            );
        } else if let Some(e) = dns_label_error(ns, 63) {
            c.err("metadata.namespace", e);
        }
    }
    for (k, v) in meta.labels.iter().flatten() {
        let mut path = "metadata.labels".to_string();
        push_key(&mut path, k);
        if let Some(e) = label_key_error(k).or_else(|| label_value_error(v)) {
            c.err(path, e);
        }
    }
}

fn check_service(svc: &Service, c: &mut Checker) {
    check_meta(&svc.metadata, true, c);
    let spec = &svc.spec;
    if let Some(r) = spec.replicas {
        if spec.mode() == ServiceMode::Global {
            c.err(
                "spec.replicas",
                "must not be set in Global mode (one task per eligible host)",
            );
        } else if r < 0 {
            c.err(
                "spec.replicas",
                format!("{r} is negative: must be 0 or more"),
            );
        } else if r > MAX_REPLICAS {
            c.err(
                "spec.replicas",
                format!("{r} is more than the maximum of {MAX_REPLICAS}"),
            );
        }
    }
    check_template(&spec.template, "spec.template", c);
    if let Some(rp) = &spec.restart_policy {
        check_restart(rp, "spec.restartPolicy", c);
    }
    if let Some(p) = &spec.placement {
        check_placement(p, c);
    }
    if let Some(u) = &spec.update {
        check_update(u, c);
    }
}

/// Upper bound of `spec.replicas`: far beyond a 50-host cluster, low enough
/// that a typo cannot create millions of tasks.
pub const MAX_REPLICAS: i32 = 10_000;

/// Smallest memory limit the engine accepts (6 MiB).
pub const MIN_MEMORY_LIMIT: u64 = 6 * 1024 * 1024;

fn check_task(t: &Task, c: &mut Checker) {
    check_meta(&t.metadata, true, c);
    if let Some(e) = dns_label_error(&t.spec.service, 63) {
        c.err("spec.service", e);
    }
    if let Some(s) = t.spec.slot
        && s < 0
    {
        c.err("spec.slot", format!("{s} is negative"));
    }
    if t.spec.template_hash.is_empty() {
        c.err("spec.templateHash", "required");
    }
    if let Some(h) = t.spec.host_name.as_deref()
        && let Some(e) = dns_subdomain_error(h)
    {
        c.err("spec.hostName", e);
    }
    check_template(&t.spec.template, "spec.template", c);
    if let Some(rp) = &t.spec.restart_policy {
        check_restart(rp, "spec.restartPolicy", c);
    }
}

fn check_template(t: &ContainerTemplate, at: &str, c: &mut Checker) {
    check_image(&t.image, &format!("{at}.image"), c);
    let mut names = BTreeMap::new();
    for (i, e) in t.env.iter().flatten().enumerate() {
        let path = format!("{at}.env[{i}].name");
        if e.name.is_empty() {
            c.err(path, "required");
        } else if e.name.contains('=') || e.name.contains('\0') {
            c.err(path, format!("{:?} must not contain '=' or NUL", e.name));
        } else if let Some(first) = names.insert(e.name.as_str(), i) {
            c.err(path, format!("{:?} is already set by env[{first}]", e.name));
        }
    }
    if let Some(w) = t.working_dir.as_deref()
        && !w.starts_with('/')
    {
        c.err(
            format!("{at}.workingDir"),
            format!("{w:?} must be an absolute path"),
        );
    }
    if let Some(u) = t.user.as_deref() {
        let bad = u.is_empty()
            || u.contains(char::is_whitespace)
            || u.split(':').count() > 2
            || u.split(':').any(str::is_empty);
        if bad {
            c.err(
                format!("{at}.user"),
                format!("{u:?} is not a user (examples: 1000, 1000:1000, nobody)"),
            );
        }
    }
    check_ports(t, at, c);
    check_mounts(t, at, c);
    if let Some(r) = &t.resources {
        check_resources(r, &format!("{at}.resources"), c);
    }
    if let Some(caps) = &t.capabilities {
        for (list, which) in [(&caps.add, "add"), (&caps.drop, "drop")] {
            for (i, cap) in list.iter().flatten().enumerate() {
                if !is_capability(cap) {
                    c.err(
                        format!("{at}.capabilities.{which}[{i}]"),
                        format!(
                            "{cap:?} is not a Linux capability (e.g. NET_ADMIN, SYS_TIME, ALL)"
                        ),
                    );
                }
            }
        }
    }
    if let Some(h) = &t.healthcheck {
        check_health(h, &format!("{at}.healthcheck"), c);
    }
    c.duration(
        t.stop_grace_period.as_ref(),
        &format!("{at}.stopGracePeriod"),
    );
    if let Some(s) = t.stop_signal.as_deref()
        && !is_signal(s)
    {
        c.err(
            format!("{at}.stopSignal"),
            format!("{s:?} is not a signal (e.g. SIGTERM, SIGINT, 15)"),
        );
    }
    for k in t.labels.iter().flat_map(|l| l.keys()) {
        let mut path = format!("{at}.labels");
        push_key(&mut path, k);
        if k.is_empty() {
            c.err(path, "label key must not be empty");
        } else if k.starts_with("shoal.dev/") {
            c.err(path, "keys under shoal.dev/ are reserved for Shoal");
        }
    }
}

fn check_image(image: &str, path: &str, c: &mut Checker) {
    if image.is_empty() {
        c.err(path, "required");
        return;
    }
    if image.contains(char::is_whitespace) {
        c.err(path, format!("{image:?} must not contain spaces"));
        return;
    }
    // The repository part (after an optional registry host, before the tag
    // or digest) must be lowercase.
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    let repo_end = without_digest[last_slash..]
        .find(':')
        .map_or(without_digest.len(), |i| i + last_slash);
    let first_slash = without_digest.find('/');
    let repo_start = match first_slash {
        Some(i)
            if without_digest[..i].contains(['.', ':']) || &without_digest[..i] == "localhost" =>
        {
            i + 1
        }
        _ => 0,
    };
    if repo_start <= repo_end
        && without_digest[repo_start..repo_end]
            .chars()
            .any(|ch| ch.is_ascii_uppercase())
    {
        c.err(
            path,
            format!("{image:?}: the repository name must be lowercase"),
        );
    }
}

fn check_ports(t: &ContainerTemplate, at: &str, c: &mut Checker) {
    let mut published: BTreeMap<(i32, Protocol, Option<&str>), usize> = BTreeMap::new();
    for (i, p) in t.ports.iter().flatten().enumerate() {
        let base = format!("{at}.ports[{i}]");
        if !(1..=65535).contains(&p.container_port) {
            c.err(
                format!("{base}.containerPort"),
                format!("{} is not a port (1-65535)", p.container_port),
            );
        }
        if let Some(ip) = p.host_ip.as_deref()
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            c.err(
                format!("{base}.hostIP"),
                format!("{ip:?} is not an IP address"),
            );
        }
        if let Some(hp) = p.host_port {
            if !(0..=65535).contains(&hp) {
                c.err(
                    format!("{base}.hostPort"),
                    format!("{hp} is not a port (1-65535, or 0 for a port the engine picks)"),
                );
                continue;
            }
            if hp == 0 {
                // A port the engine picks: never clashes.
                continue;
            }
            let proto = p.protocol.unwrap_or_default();
            // Any address (None) conflicts with every address of that port.
            let clash = published.iter().find(|((port, pr, ip), _)| {
                *port == hp
                    && *pr == proto
                    && (ip.is_none() || p.host_ip.is_none() || *ip == p.host_ip.as_deref())
            });
            if let Some((_, first)) = clash {
                c.err(
                    format!("{base}.hostPort"),
                    format!(
                        "{hp}/{} is already published by ports[{first}]",
                        proto_name(proto)
                    ),
                );
            } else {
                published.insert((hp, proto, p.host_ip.as_deref()), i);
            }
        }
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

fn check_mounts(t: &ContainerTemplate, at: &str, c: &mut Checker) {
    let mut targets = BTreeMap::new();
    for (i, m) in t.mounts.iter().flatten().enumerate() {
        let base = format!("{at}.mounts[{i}]");
        if !m.target.starts_with('/') {
            c.err(
                format!("{base}.target"),
                format!("{:?} must be an absolute path", m.target),
            );
        } else if m.target == "/" {
            c.err(format!("{base}.target"), "must not be the root directory");
        } else if let Some(first) = targets.insert(m.target.trim_end_matches('/'), i) {
            c.err(
                format!("{base}.target"),
                format!("{:?} is already mounted by mounts[{first}]", m.target),
            );
        }
        let src = m.source.as_deref().unwrap_or_default();
        match m.kind {
            MountType::Bind => {
                if src.is_empty() {
                    c.err(
                        format!("{base}.source"),
                        "required for a Bind mount (an absolute host path)",
                    );
                } else if !src.starts_with('/') {
                    c.err(
                        format!("{base}.source"),
                        format!("{src:?} must be an absolute host path"),
                    );
                }
            }
            MountType::Volume => {
                let ok = src
                    .chars()
                    .next()
                    .is_some_and(|ch| ch.is_ascii_alphanumeric())
                    && src
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch));
                if src.is_empty() {
                    c.err(
                        format!("{base}.source"),
                        "required for a Volume mount (a volume name)",
                    );
                } else if !ok {
                    c.err(
                        format!("{base}.source"),
                        format!("{src:?} is not a volume name (letters, digits, '_', '.', '-')"),
                    );
                }
            }
            MountType::Tmpfs => {
                if !src.is_empty() {
                    c.err(format!("{base}.source"), "must be empty for a Tmpfs mount");
                }
            }
        }
        if m.size.is_some() && m.kind != MountType::Tmpfs {
            c.err(format!("{base}.size"), "only a Tmpfs mount has a size");
        } else if let Some(0) = c.bytes(m.size.as_ref(), &format!("{base}.size")) {
            c.err(format!("{base}.size"), "must be more than 0");
        }
    }
}

fn check_resources(r: &Resources, at: &str, c: &mut Checker) {
    let (mut cpu_lim, mut mem_lim) = (None, None);
    if let Some(l) = &r.limits {
        let p = format!("{at}.limits.cpu");
        cpu_lim = c.cpu(l.cpu.as_ref(), &p);
        if cpu_lim == Some(0) {
            c.err(
                p,
                "a cpu limit must be more than 0 (leave it out for no limit)",
            );
        }
        let p = format!("{at}.limits.memory");
        mem_lim = c.bytes(l.memory.as_ref(), &p);
        if let Some(m) = mem_lim
            && m < MIN_MEMORY_LIMIT
        {
            c.err(
                p,
                format!(
                    "{:?} is below the engine's minimum of 6Mi",
                    l.memory
                        .as_ref()
                        .map(ByteQuantity::as_str)
                        .unwrap_or_default()
                ),
            );
        }
        if let Some(pids) = l.pids
            && pids < 1
        {
            c.err(
                format!("{at}.limits.pids"),
                format!("{pids} must be at least 1 (leave it out for no limit)"),
            );
        }
    }
    if let Some(res) = &r.reservations {
        let p = format!("{at}.reservations.cpu");
        if let (Some(v), Some(lim)) = (c.cpu(res.cpu.as_ref(), &p), cpu_lim)
            && v > lim
        {
            c.err(p, format!("{v}m is more than the cpu limit ({lim}m)"));
        }
        let p = format!("{at}.reservations.memory");
        if let (Some(v), Some(lim)) = (c.bytes(res.memory.as_ref(), &p), mem_lim)
            && v > lim
        {
            c.err(
                p,
                format!("{v} bytes is more than the memory limit ({lim} bytes)"),
            );
        }
    }
}

fn check_health(h: &HealthCheck, at: &str, c: &mut Checker) {
    let path = format!("{at}.command");
    match h.command.first().map(String::as_str) {
        None => c.err(path, "required: [\"CMD\", prog, args…], [\"CMD-SHELL\", cmd] or [\"NONE\"]"),
        Some("CMD") if h.command.len() < 2 => c.err(path, "CMD needs a program: [\"CMD\", prog, args…]"),
        Some("CMD-SHELL") if h.command.len() != 2 => {
            c.err(path, "CMD-SHELL takes exactly one shell command: [\"CMD-SHELL\", \"cmd\"]")
        }
        Some("NONE") if h.command.len() != 1 => c.err(path, "NONE takes no arguments"),
        Some("CMD" | "CMD-SHELL" | "NONE") => {}
        Some(other) => c.err(
            format!("{path}[0]"),
            format!("{other:?} must be CMD, CMD-SHELL or NONE (e.g. [\"CMD\", \"wget\", \"-q\", \"-O-\", \"http://127.0.0.1:8080/\"])"),
        ),
    }
    for (d, name) in [(&h.interval, "interval"), (&h.timeout, "timeout")] {
        let p = format!("{at}.{name}");
        if let Some(v) = c.duration(d.as_ref(), &p)
            && v < std::time::Duration::from_millis(1)
        {
            c.err(p, "must be at least 1ms");
        }
    }
    c.duration(h.start_period.as_ref(), &format!("{at}.startPeriod"));
    if let Some(r) = h.retries
        && r < 0
    {
        c.err(format!("{at}.retries"), format!("{r} is negative"));
    }
}

fn check_restart(rp: &RestartPolicy, at: &str, c: &mut Checker) {
    let delay = c.duration(rp.delay.as_ref(), &format!("{at}.delay"));
    let max = c.duration(rp.max_delay.as_ref(), &format!("{at}.maxDelay"));
    let max_eff = max.unwrap_or(std::time::Duration::from_secs(30));
    if let Some(d) = delay
        && d > max_eff
    {
        c.err(
            format!("{at}.delay"),
            format!(
                "{} is more than maxDelay ({})",
                rp.delay
                    .as_ref()
                    .map(DurationValue::as_str)
                    .unwrap_or_default(),
                rp.max_delay.as_ref().map_or("30s", DurationValue::as_str)
            ),
        );
    }
    if let Some(a) = rp.max_attempts
        && a < 0
    {
        c.err(
            format!("{at}.maxAttempts"),
            format!("{a} is negative (0 means unlimited)"),
        );
    }
    if let Some(w) = c.duration(rp.window.as_ref(), &format!("{at}.window"))
        && w.is_zero()
    {
        c.err(format!("{at}.window"), "must be more than 0s");
    }
}

fn check_placement(p: &Placement, c: &mut Checker) {
    if let Some(sel) = &p.host_selector {
        for (suffix, msg) in selector_errors(sel) {
            c.err(format!("spec.placement.hostSelector{suffix}"), msg);
        }
    }
    let mut seen = BTreeSet::new();
    for (i, key) in p.spread_by.iter().flatten().enumerate() {
        let path = format!("spec.placement.spreadBy[{i}]");
        if let Some(e) = label_key_error(key) {
            c.err(path, e);
        } else if !seen.insert(key) {
            c.err(path, format!("{key:?} is listed twice"));
        }
    }
    if let Some(m) = p.max_per_host
        && m < 1
    {
        c.err(
            "spec.placement.maxPerHost",
            format!("{m} must be at least 1 (leave it out for no limit)"),
        );
    }
}

fn check_update(u: &UpdateConfig, c: &mut Checker) {
    if let Some(p) = u.parallelism
        && p < 0
    {
        c.err(
            "spec.update.parallelism",
            format!("{p} is negative (0 means all at once)"),
        );
    }
    c.duration(u.delay.as_ref(), "spec.update.delay");
    c.duration(u.monitor.as_ref(), "spec.update.monitor");
    if let Some(r) = u.max_failure_ratio
        && !(0.0..=1.0).contains(&r)
    {
        c.err(
            "spec.update.maxFailureRatio",
            format!("{r} must be between 0 and 1"),
        );
    }
}

const CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// True for `ALL` and Linux capability names, with or without `CAP_`.
pub fn is_capability(name: &str) -> bool {
    let n = name.strip_prefix("CAP_").unwrap_or(name);
    n == "ALL" || CAPABILITIES.contains(&n)
}

const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// True for signal names (`SIGTERM`, `TERM`, `SIGRTMIN+3`) and numbers 1-64.
pub fn is_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let n = s.strip_prefix("SIG").unwrap_or(s);
    if SIGNALS.contains(&n) {
        return true;
    }
    let rt = |base: &str| {
        n.strip_prefix(base).is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix(['+', '-'])
                    .and_then(|d| d.parse::<u32>().ok())
                    .is_some_and(|d| d <= 30)
        })
    };
    rt("RTMIN") || rt("RTMAX")
}
