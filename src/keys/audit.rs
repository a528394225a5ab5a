//! The audit trail: who did what to which key, and how it ended. Every management action,
//! from the CLI or the HTTP API, goes through [`Trail`], which runs the operation from
//! [`super::manage`] and then records one [`AuditEvent`]: durably in the store (the file store
//! appends JSON lines beside the keys file, Redis a capped stream) and as a structured log line
//! (`target: keygate::audit`).
//!
//! An event carries ids, owners and the names of the fields that changed, never their values:
//! no secret and no hash can reach it, whatever an operation returns.
//!
//! The event of a change is committed with the change, in one write of the store
//! ([`super::Batch::events`]): the file store stages it beside the keys file and lets the
//! keys file's rename commit both (see [`super::file`]'s `# Audit events and crashes`), Redis
//! adds it to the stream in the script that makes the change. A crash leaves both or neither.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::manage::{self, Change, CreatedKey, Edit, KeyPolicy, KeySpec};
use super::{Batch, KeyRecord, KeyStore, StoreError};

/// One management action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// The management key's id (`key_…`), or `cli:<user>@<host>`.
    pub actor: String,
    /// `create`, `update`, `revoke`, `suspend`, `resume`, `rotate`.
    pub action: String,
    /// The key acted on (for `create`, the new key; absent when it was never found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// That key's owner, when known (owner-bound callers list only their owner's events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Names of the fields the action changed (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// `rotate`: the id of the key issued in its place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_key_id: Option<String>,
    /// `ok`, or the error code the action ended with.
    pub result: String,
}

/// Who acts: a management key, or a person at the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    /// `cli:<user>@<host>` for the OS user running the command.
    pub fn cli() -> Self {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".into());
        Self(format!("cli:{user}@{host}"))
    }

    /// A management key acting through the HTTP API.
    pub fn key(id: &str) -> Self {
        Self(id.to_owned())
    }

    /// What a new key's `created_by` records: a management key's id. Keys made at the CLI
    /// leave it out (the audit trail names the user and host): every byte of a record counts
    /// against the 1 MiB of a keys file mounted from a Kubernetes Secret, and a `user@host`
    /// on each of 2,000 keys would take 4 % of it.
    pub fn creator(&self) -> Option<&str> {
        (!self.0.starts_with("cli:")).then_some(self.0.as_str())
    }
}

/// Which events to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub key_id: Option<String>,
    pub owner: Option<String>,
    pub since: Option<SystemTime>,
    /// At most this many (the most recent ones), oldest first.
    pub limit: Option<usize>,
}

impl AuditQuery {
    pub fn matches(&self, event: &AuditEvent) -> bool {
        self.key_id.as_deref().is_none_or(|id| {
            event.key_id.as_deref() == Some(id) || event.new_key_id.as_deref() == Some(id)
        }) && self
            .owner
            .as_deref()
            .is_none_or(|o| event.owner.as_deref() == Some(o))
            && self.since.is_none_or(|since| event.at >= since)
    }

    /// Filters events (oldest first) and keeps the last `limit`.
    pub fn apply(&self, events: impl IntoIterator<Item = AuditEvent>) -> Vec<AuditEvent> {
        let mut out: Vec<AuditEvent> = events.into_iter().filter(|e| self.matches(e)).collect();
        if let Some(limit) = self.limit
            && out.len() > limit
        {
            out.drain(..out.len() - limit);
        }
        out
    }
}

/// The error code an action ended with, as the audit trail and the API name it.
pub fn result_code(result: &Result<impl Sized, StoreError>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(StoreError::NotFound(_)) => "not_found".into(),
        Err(StoreError::InvalidSpec(_)) => "invalid_parameter".into(),
        Err(StoreError::OwnerCap { .. }) => "owner_key_limit".into(),
        Err(StoreError::Conflict { .. }) => "conflict".into(),
        Err(_) => "key_store_unavailable".into(),
    }
}

/// Management operations that leave an audit event each: what the CLI and the API call.
///
/// An action that changes the store hands its events to the store with the change
/// ([`super::Batch::events`], set by a [`manage::Stamp`]): the store commits both at once, so a
/// crash leaves the change and its event, or neither. An action refused before any write (not
/// found, a conflict, the owner cap) changes nothing; its event is appended on its own.
pub struct Trail<'a> {
    pub store: &'a dyn KeyStore,
    pub policy: &'a KeyPolicy,
    pub actor: Actor,
}

/// The events a stamp put on the batch last committed, kept to be logged once it is.
type Stamped = std::sync::Mutex<Vec<AuditEvent>>;

impl Trail<'_> {
    pub async fn create_many(
        &self,
        spec: KeySpec,
        count: usize,
        now: SystemTime,
    ) -> Result<Vec<CreatedKey>, StoreError> {
        let owner = spec.owner.clone();
        let by = self.actor.creator();
        let stamped = Stamped::default();
        let stamp = |batch: &mut Batch| {
            batch.events = (batch.inserts.iter())
                .map(|(_, r)| {
                    let (id, owner) = (Some(r.id.as_str()), Some(r.owner.as_str()));
                    self.event(now, "create", id, owner, vec![], None, "ok".into())
                })
                .collect();
            keep(&stamped, &batch.events);
        };
        let result =
            manage::create_many_by(self.store, self.policy, spec, count, now, by, &stamp).await;
        self.finish(&result, &stamped, || {
            self.event(
                now,
                "create",
                None,
                Some(&owner),
                vec![],
                None,
                result_code(&result),
            )
        })
        .await;
        result
    }

    pub async fn create(&self, spec: KeySpec, now: SystemTime) -> Result<CreatedKey, StoreError> {
        let mut created = self.create_many(spec, 1, now).await?;
        Ok(created.pop().expect("create_many returns `count` keys"))
    }

    pub async fn change(&self, id: &str, change: Change) -> Result<KeyRecord, StoreError> {
        let now = SystemTime::now();
        let by = Some(self.actor.0.as_str());
        let action = match change {
            Change::Revoke => "revoke",
            Change::Suspend => "suspend",
            Change::Resume => "resume",
        };
        let changed = vec!["status".to_owned()];
        let stamped = Stamped::default();
        let stamp = self.stamp_one(now, action, id, &changed, &stamped);
        let result = manage::update_by(self.store, id, change, by, now, &stamp).await;
        self.ended(now, action, id, &stamped, &result).await;
        result
    }

    pub async fn rotate(
        &self,
        id: &str,
        grace: Duration,
        now: SystemTime,
    ) -> Result<CreatedKey, StoreError> {
        let by = self.actor.creator();
        let changed = vec!["expires_at".to_owned()];
        let stamped = Stamped::default();
        let stamp = self.stamp_one(now, "rotate", id, &changed, &stamped);
        let result = manage::rotate_by(self.store, self.policy, id, grace, now, by, &stamp).await;
        self.ended(now, "rotate", id, &stamped, &result).await;
        result
    }

    pub async fn edit(
        &self,
        id: &str,
        edit: Edit,
        now: SystemTime,
    ) -> Result<KeyRecord, StoreError> {
        let changed = edit.fields();
        let stamped = Stamped::default();
        let stamp = self.stamp_one(now, "update", id, &changed, &stamped);
        let result = manage::edit(self.store, self.policy, id, edit, &stamp).await;
        self.ended(now, "update", id, &stamped, &result).await;
        result
    }

    /// Removes a revoked key's record ([`manage::delete`]); returns the record as it was.
    pub async fn delete(&self, id: &str) -> Result<KeyRecord, StoreError> {
        let now = SystemTime::now();
        let stamped = Stamped::default();
        let stamp = self.stamp_one(now, "delete", id, &[], &stamped);
        let result = manage::delete(self.store, id, &stamp).await;
        self.ended(now, "delete", id, &stamped, &result).await;
        result
    }

    /// A stamp for an action on one existing key: the event names the key's owner and, for a
    /// rotation, the key issued in its place (the batch's insert).
    fn stamp_one<'s>(
        &'s self,
        at: SystemTime,
        action: &'s str,
        id: &'s str,
        changed: &'s [String],
        stamped: &'s Stamped,
    ) -> impl Fn(&mut Batch) + Send + Sync + 's {
        move |batch: &mut Batch| {
            let owner = (batch.updates.first().map(|u| u.after.owner.as_str()))
                .or_else(|| batch.deletes.first().map(|(_, r)| r.owner.as_str()));
            let new_id = batch.inserts.first().map(|(_, r)| r.id.as_str());
            let event = self.event(
                at,
                action,
                Some(id),
                owner,
                changed.to_vec(),
                new_id,
                "ok".into(),
            );
            batch.events = vec![event];
            keep(stamped, &batch.events);
        }
    }

    /// Records how an action on an existing key ended when it was refused (its event, alone;
    /// a committed action's event went with its change).
    async fn ended<T>(
        &self,
        at: SystemTime,
        action: &str,
        id: &str,
        stamped: &Stamped,
        result: &Result<T, StoreError>,
    ) {
        // A refused action still names the key's owner (owner-bound callers list their
        // owner's events): one more read, on failures only.
        let owner = match result {
            Ok(_) => None,
            Err(_) => (self.store.by_id(id).await.ok().flatten()).map(|(_, r)| r.owner),
        };
        self.finish(result, stamped, || {
            let code = result_code(result);
            self.event(at, action, Some(id), owner.as_deref(), vec![], None, code)
        })
        .await;
    }

    /// Logs the events committed with a change; or, for a refusal, stores and logs its event.
    async fn finish<T>(
        &self,
        result: &Result<T, StoreError>,
        stamped: &Stamped,
        refused: impl FnOnce() -> AuditEvent,
    ) {
        match result {
            Ok(_) => log(&std::mem::take(
                &mut *stamped.lock().unwrap_or_else(|p| p.into_inner()),
            )),
            Err(_) => record(self.store, &[refused()]).await,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        at: SystemTime,
        action: &str,
        key_id: Option<&str>,
        owner: Option<&str>,
        changed: Vec<String>,
        new_key_id: Option<&str>,
        result: String,
    ) -> AuditEvent {
        AuditEvent {
            at,
            actor: self.actor.0.clone(),
            action: action.into(),
            key_id: key_id.map(Into::into),
            owner: owner.map(Into::into),
            changed,
            new_key_id: new_key_id.map(Into::into),
            result,
        }
    }
}

fn keep(stamped: &Stamped, events: &[AuditEvent]) {
    *stamped.lock().unwrap_or_else(|p| p.into_inner()) = events.to_vec();
}

/// More events than this in one go (`keys create --count`) are logged as one summary line;
/// the store still gets every event.
const LOGGED_ONE_BY_ONE: usize = 100;

/// Logs `events` and appends them to the store's trail (events of no change: a refusal).
pub async fn record(store: &dyn KeyStore, events: &[AuditEvent]) {
    log(events);
    if let Err(e) = store.append_audit(events).await {
        tracing::error!(error = %e, events = events.len(), "audit events not stored");
    }
}

/// Logs `events` as structured lines (`target: keygate::audit`).
fn log(events: &[AuditEvent]) {
    if events.is_empty() {
        return;
    }
    if events.len() > LOGGED_ONE_BY_ONE {
        let first = &events[0];
        tracing::info!(
            target: "keygate::audit",
            actor = %first.actor,
            action = %first.action,
            owner = first.owner.as_deref(),
            events = events.len(),
            "management actions"
        );
    } else {
        for event in events {
            tracing::info!(
                target: "keygate::audit",
                actor = %event.actor,
                action = %event.action,
                key_id = event.key_id.as_deref(),
                owner = event.owner.as_deref(),
                changed = %event.changed.join(","),
                new_key_id = event.new_key_id.as_deref(),
                result = %event.result,
                "management action"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: u64, key: &str, owner: &str) -> AuditEvent {
        AuditEvent {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            actor: "cli:a@b".into(),
            action: "revoke".into(),
            key_id: Some(key.into()),
            owner: Some(owner.into()),
            changed: vec![],
            new_key_id: None,
            result: "ok".into(),
        }
    }

    #[test]
    fn queries_filter_and_keep_the_latest() {
        let events = vec![
            event(1, "k1", "a"),
            event(2, "k2", "b"),
            event(3, "k1", "a"),
        ];
        let cases: &[(AuditQuery, &[u64])] = &[
            (AuditQuery::default(), &[1, 2, 3]),
            (
                AuditQuery {
                    key_id: Some("k1".into()),
                    ..Default::default()
                },
                &[1, 3],
            ),
            (
                AuditQuery {
                    owner: Some("b".into()),
                    ..Default::default()
                },
                &[2],
            ),
            (
                AuditQuery {
                    since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2)),
                    ..Default::default()
                },
                &[2, 3],
            ),
            (
                AuditQuery {
                    limit: Some(1),
                    ..Default::default()
                },
                &[3],
            ),
        ];
        for (query, want) in cases {
            let got: Vec<u64> = query
                .apply(events.clone())
                .iter()
                .map(|e| {
                    e.at.duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap()
                        .as_secs()
                })
                .collect();
            assert_eq!(&got, want, "{query:?}");
        }
    }

    #[test]
    fn the_cli_actor_names_user_and_host() {
        let actor = Actor::cli();
        assert!(
            actor.0.starts_with("cli:") && actor.0.contains('@'),
            "{actor:?}"
        );
    }
}
