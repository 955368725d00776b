//! The dispatcher addresses an agent dials: those it was started with, and
//! those the control plane told it (`ControlPlaneServers`: the join
//! addresses of a highly available control plane's servers), kept in a file
//! so that a restarted agent still knows them.
//!
//! The told list replaces the one told before: servers that joined after the
//! agent started are dialled without changing its command line, and servers
//! removed are forgotten. The given addresses are always kept (they are the
//! way back if every told one is gone).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file, in the agent's state directory, holding the told addresses.
pub const FILE: &str = "dispatchers";

/// The addresses an agent dials (see the module documentation).
#[derive(Debug)]
pub struct Dispatchers {
    given: Vec<String>,
    told: Mutex<Vec<String>>,
    file: Option<PathBuf>,
}

/// Whether `url` may be told: an `https://` join address without spaces.
fn acceptable(url: &str) -> bool {
    url.strip_prefix("https://")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
}

impl Dispatchers {
    /// The `given` addresses, and those told earlier as kept in `file` (if
    /// any; an unreadable file is logged and taken as empty).
    pub fn new(given: Vec<String>, file: Option<PathBuf>) -> Self {
        let told = file.as_deref().map(load).unwrap_or_default();
        Self {
            given,
            told: Mutex::new(told),
            file,
        }
    }

    /// Every address to dial: the given ones in their order, then the told
    /// ones not among them.
    pub fn all(&self) -> Vec<String> {
        let told = self.told.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut all = self.given.clone();
        for url in told {
            if !all.contains(&url) {
                all.push(url);
            }
        }
        all
    }

    /// Takes the list the control plane told (keeping only `https://`
    /// addresses) in place of the one told before, and keeps it in the file.
    /// Whether the list changed.
    pub fn tell(&self, urls: Vec<String>) -> bool {
        let mut unique: Vec<String> = Vec::with_capacity(urls.len());
        for url in urls {
            if acceptable(&url) && !unique.contains(&url) {
                unique.push(url);
            }
        }
        let urls = unique;
        let mut told = self.told.lock().unwrap_or_else(|e| e.into_inner());
        if *told == urls {
            return false;
        }
        told.clone_from(&urls);
        drop(told);
        if let Some(file) = &self.file
            && let Err(e) = save(file, &urls)
        {
            tracing::warn!(file = %file.display(), error = %e, "cannot keep the control plane's server addresses");
        }
        true
    }

    /// Deletes the kept addresses in `state_dir` (the host left the cluster).
    pub fn forget(state_dir: &Path) -> io::Result<()> {
        match std::fs::remove_file(state_dir.join(FILE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn load(file: &Path) -> Vec<String> {
    match std::fs::read_to_string(file) {
        Ok(s) => s
            .lines()
            .map(str::trim)
            .filter(|l| acceptable(l))
            .map(str::to_owned)
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read the control plane's server addresses");
            Vec::new()
        }
    }
}

/// Writes the list whole (a temporary file renamed over the old one).
fn save(file: &Path, urls: &[String]) -> io::Result<()> {
    let tmp = file.with_extension("new");
    let mut text = urls.join("\n");
    text.push('\n');
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn given() -> Vec<String> {
        vec!["https://10.0.0.1:6445".to_owned()]
    }

    #[test]
    fn told_addresses_follow_the_given_ones_and_replace_those_told_before() {
        let d = Dispatchers::new(given(), None);
        assert_eq!(d.all(), given());
        assert!(d.tell(vec![
            "https://10.0.0.2:6445".into(),
            "https://10.0.0.1:6445".into(),
            "https://10.0.0.3:6445".into(),
        ]));
        assert_eq!(
            d.all(),
            [
                "https://10.0.0.1:6445",
                "https://10.0.0.2:6445",
                "https://10.0.0.3:6445"
            ]
        );
        assert!(!d.tell(vec![
            "https://10.0.0.2:6445".into(),
            "https://10.0.0.1:6445".into(),
            "https://10.0.0.3:6445".into(),
        ]));
        // Server 3 removed, server 4 joined.
        assert!(d.tell(vec![
            "https://10.0.0.2:6445".into(),
            "https://10.0.0.4:6445".into(),
        ]));
        assert_eq!(
            d.all(),
            [
                "https://10.0.0.1:6445",
                "https://10.0.0.2:6445",
                "https://10.0.0.4:6445"
            ]
        );
    }

    #[test]
    fn only_https_addresses_are_taken() {
        let d = Dispatchers::new(given(), None);
        d.tell(vec![
            "http://10.0.0.2:6444".into(),
            "https://".into(),
            "https://a b".into(),
            "https://10.0.0.5:6445".into(),
        ]);
        assert_eq!(d.all(), ["https://10.0.0.1:6445", "https://10.0.0.5:6445"]);
    }

    #[test]
    fn told_addresses_survive_a_restart_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE);
        let d = Dispatchers::new(given(), Some(file.clone()));
        d.tell(vec!["https://10.0.0.2:6445".into()]);
        let again = Dispatchers::new(given(), Some(file.clone()));
        assert_eq!(
            again.all(),
            ["https://10.0.0.1:6445", "https://10.0.0.2:6445"]
        );
        Dispatchers::forget(dir.path()).unwrap();
        Dispatchers::forget(dir.path()).unwrap();
        assert_eq!(Dispatchers::new(given(), Some(file)).all(), given());
    }
}
