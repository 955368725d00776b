//! Leader election among operators with a `coordination.k8s.io/v1` Lease,
//! as Kubernetes' own controllers do it.
//!
//! A candidate takes the lease when there is none, when it is free, or when
//! its record has not changed for its duration *by this candidate's clock*
//! (so clocks of different machines need not agree); the holder renews it
//! every retry period and gives up leading when it has not managed to for
//! the renew deadline, which is shorter than the duration: it stops before
//! anyone else may start. Every write is conditional on the resourceVersion
//! read, so two candidates never both win the same round.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use shoal_store::StoreError;
use tokio::time::Instant;

use crate::store_error;

/// How a lease is held.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This candidate (unique among the candidates: a pod name and a random
    /// suffix).
    pub identity: String,
    /// How long a record that does not change holds (15 s).
    pub duration: Duration,
    /// The holder stops leading when it could not renew for this long (10 s).
    pub renew_deadline: Duration,
    /// How often candidates try and the holder renews (2 s).
    pub retry: Duration,
}

impl LeaseConfig {
    /// Kubernetes' controller defaults: 15 s, 10 s, 2 s.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What a candidate does about the lease it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// There is no lease: create it, held by this candidate.
    Create,
    /// This candidate holds it: renew.
    Renew,
    /// Free, or expired: take it.
    TakeOver,
    /// Someone else holds it: try again later.
    Wait,
}

/// The decision, from the lease's holder (`None`: no lease object at all),
/// how long its record has stayed unchanged as this candidate saw it, and
/// the lease's duration.
pub fn decide(
    lease: Option<Option<&str>>,
    me: &str,
    unchanged_for: Duration,
    duration: Duration,
) -> LeaseAction {
    match lease {
        None => LeaseAction::Create,
        Some(Some(holder)) if holder == me => LeaseAction::Renew,
        Some(None | Some("")) => LeaseAction::TakeOver,
        Some(Some(_)) if unchanged_for >= duration => LeaseAction::TakeOver,
        Some(Some(_)) => LeaseAction::Wait,
    }
}

/// One candidate for a lease.
pub struct LeaseElector {
    api: kube::Api<Lease>,
    config: LeaseConfig,
    /// The record last read (its resourceVersion) and when it last changed.
    observed: Option<(String, Instant)>,
}

impl std::fmt::Debug for LeaseElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseElector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl LeaseElector {
    /// A candidate for the lease of `config`.
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: kube::Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn subject(&self) -> String {
        format!("leases/{}/{}", self.config.namespace, self.config.name)
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.config.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One round: reads the lease and creates, renews or takes it when it
    /// may. `Ok(true)`: this candidate holds the lease now. A write that
    /// lost a race is `Ok(false)`; an API error is the error (the caller
    /// keeps leading only until its renew deadline).
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, StoreError> {
        let subject = self.subject();
        let current = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| store_error(&subject, e))?;
        let at = Instant::now();
        let Some(mut lease) = current else {
            self.observed = None;
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.duration_secs()),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(store_error(&subject, e)),
            };
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let since = match &self.observed {
            Some((seen, since)) if *seen == rv => *since,
            _ => at,
        };
        self.observed = Some((rv, since));
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.config.duration);
        let action = decide(
            Some(spec.holder_identity.as_deref()),
            &self.config.identity,
            at.saturating_duration_since(since),
            duration,
        );
        match action {
            LeaseAction::Wait | LeaseAction::Create => return Ok(false),
            LeaseAction::Renew => {
                spec.renew_time = Some(now());
            }
            LeaseAction::TakeOver => {
                tracing::info!(
                    lease = %subject,
                    from = spec.holder_identity.as_deref().unwrap_or("nobody"),
                    "taking the lease"
                );
                spec.holder_identity = Some(self.config.identity.clone());
                spec.lease_duration_seconds = Some(self.duration_secs());
                spec.acquire_time = Some(now());
                spec.renew_time = Some(now());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(store_error(&subject, e)),
        }
    }

    /// Gives the lease up if this candidate holds it, so another takes it
    /// at once rather than after its duration.
    pub async fn release(&mut self) -> Result<(), StoreError> {
        let subject = self.subject();
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| store_error(&subject, e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote it meanwhile: it is not ours any more.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(store_error(&subject, e)),
        }
    }
}

/// The label the leading operator sets on its own pod, so that a Service
/// selecting it sends agents to the leader while every replica stays Ready.
pub const LEADER_LABEL: &str = "shoal.dev/leader";

/// The leader's own pod, labelled [`LEADER_LABEL`]`=true` while it leads.
pub struct LeaderPod {
    api: kube::Api<k8s_openapi::api::core::v1::Pod>,
    name: String,
}

impl std::fmt::Debug for LeaderPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderPod")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl LeaderPod {
    /// The pod `namespace/name` (this process's).
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: kube::Api::namespaced(client, namespace),
            name: name.into(),
        }
    }

    /// Sets the label (`leading`) or removes it.
    pub async fn mark(&self, leading: bool) -> Result<(), StoreError> {
        let value = if leading {
            serde_json::json!("true")
        } else {
            serde_json::Value::Null
        };
        let patch = serde_json::json!({ "metadata": { "labels": { LEADER_LABEL: value } } });
        self.api
            .patch(
                &self.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .map(|_| ())
            .map_err(|e| store_error(&format!("pods/{}", self.name), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let d = Duration::from_secs(15);
        let s = Duration::from_secs;
        // (lease holder, unchanged for, expected)
        let cases: [(Option<Option<&str>>, Duration, LeaseAction); 7] = [
            (None, s(0), LeaseAction::Create),
            (Some(Some("me")), s(0), LeaseAction::Renew),
            (Some(Some("me")), s(60), LeaseAction::Renew),
            (Some(None), s(0), LeaseAction::TakeOver),
            (Some(Some("")), s(0), LeaseAction::TakeOver),
            (Some(Some("other")), s(14), LeaseAction::Wait),
            (Some(Some("other")), s(15), LeaseAction::TakeOver),
        ];
        for (lease, unchanged, want) in cases {
            assert_eq!(
                decide(lease, "me", unchanged, d),
                want,
                "{lease:?} {unchanged:?}"
            );
        }
    }
}
