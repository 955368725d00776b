//! What the scheduler tells the orchestrator: per Service, why its tasks fit
//! nowhere. The orchestrator, the one writer of Service status, puts it on
//! the `Schedulable` condition.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::scheduler::ServiceRef;

/// Shared, cheap to clone.
#[derive(Clone, Debug)]
pub struct SchedulingReports {
    inner: Arc<Mutex<BTreeMap<ServiceRef, String>>>,
    changed: broadcast::Sender<ServiceRef>,
}

impl Default for SchedulingReports {
    fn default() -> Self {
        Self::new()
    }
}

impl SchedulingReports {
    /// An empty set of reports.
    pub fn new() -> Self {
        let (changed, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Mutex::new(BTreeMap::new())),
            changed,
        }
    }

    /// The explanation for a service, if its tasks fit nowhere.
    pub fn get(&self, svc: &ServiceRef) -> Option<String> {
        self.inner.lock().ok().and_then(|m| m.get(svc).cloned())
    }

    /// Replaces every report with `now`; announces the services whose report
    /// changed.
    pub fn replace(&self, now: BTreeMap<ServiceRef, String>) {
        let mut changed = Vec::new();
        if let Ok(mut m) = self.inner.lock() {
            for (k, v) in &now {
                if m.get(k) != Some(v) {
                    changed.push(k.clone());
                }
            }
            for k in m.keys() {
                if !now.contains_key(k) {
                    changed.push(k.clone());
                }
            }
            *m = now;
        }
        for k in changed {
            // No receiver is fine: nobody is waiting.
            let _ = self.changed.send(k);
        }
    }

    /// Announcements of changed reports. A receiver that lags gets
    /// `RecvError::Lagged` and should look at every service.
    pub fn subscribe(&self) -> broadcast::Receiver<ServiceRef> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_announces_changes_only() {
        let r = SchedulingReports::new();
        let mut rx = r.subscribe();
        let a = ServiceRef::new("default", "a");
        let b = ServiceRef::new("default", "b");
        r.replace([(a.clone(), "x".to_string())].into());
        assert_eq!(rx.try_recv().ok(), Some(a.clone()));
        assert!(rx.try_recv().is_err());
        r.replace([(a.clone(), "x".to_string()), (b.clone(), "y".to_string())].into());
        assert_eq!(rx.try_recv().ok(), Some(b.clone()));
        assert!(rx.try_recv().is_err());
        r.replace(BTreeMap::new());
        let mut got = vec![rx.try_recv().ok(), rx.try_recv().ok()];
        got.sort();
        assert_eq!(got, vec![Some(a.clone()), Some(b.clone())]);
        assert_eq!(r.get(&a), None);
    }
}
