//! A compact form of a [`KeyRecord`] for a store that holds every key in memory (the file
//! store), so a million keys fit in a sidecar's budget.
//!
//! A `KeyRecord` is about 376 bytes inline plus its strings on the heap: ~600 bytes a key with
//! its index slot. Packed with postcard (varints, length-prefixed strings), the same record
//! is 70–120 bytes in one allocation. Only keys that are actually used are unpacked, once per
//! cache fill, into the `Arc<KeyRecord>` the cache holds; a cache miss pays one decode
//! (about a microsecond), never a disk read.
//!
//! The packed layout is private to the running process (it is never written anywhere), so it
//! can change freely between versions.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[cfg(test)]
use crate::credential::CredentialHeader;
use crate::credential::HeaderSet;
use crate::keys::{Environment, KeyRecord, KeyType, Status};
use crate::limits::Limits;

/// Field for field a `KeyRecord`, without the serde attributes that make the file format
/// readable (skipped fields would break a format that is not self-describing).
#[derive(Serialize, Deserialize)]
struct Packed<'a> {
    id: Cow<'a, str>,
    name: Cow<'a, str>,
    owner: Cow<'a, str>,
    key_type: KeyType,
    env: Environment,
    scopes: Cow<'a, [String]>,
    allowed_cidrs: Cow<'a, [IpNet]>,
    expires_at: Option<i128>,
    plan: Option<Cow<'a, str>>,
    /// per_second, per_minute, per_hour, per_day, per_month, burst.
    limits: [Option<u64>; 6],
    workspace: Option<Cow<'a, str>>,
    project: Option<Cow<'a, str>>,
    /// `HeaderSet` bits (the CLI writes the list in the set's order).
    headers: u8,
    allowed_origins: Cow<'a, [String]>,
    status: Status,
    created_at: i128,
    last_used_at: Option<i128>,
}

pub fn pack(record: &KeyRecord) -> Box<[u8]> {
    let l = &record.limits;
    let packed = Packed {
        id: Cow::Borrowed(&record.id),
        name: Cow::Borrowed(&record.name),
        owner: Cow::Borrowed(&record.owner),
        key_type: record.key_type,
        env: record.env,
        scopes: Cow::Borrowed(&record.scopes),
        allowed_cidrs: Cow::Borrowed(&record.allowed_cidrs),
        expires_at: record.expires_at.map(nanos),
        plan: record.plan.as_deref().map(Cow::Borrowed),
        limits: [
            l.per_second,
            l.per_minute,
            l.per_hour,
            l.per_day,
            l.per_month,
            l.burst,
        ],
        workspace: record.workspace.as_deref().map(Cow::Borrowed),
        project: record.project.as_deref().map(Cow::Borrowed),
        headers: HeaderSet::of(&record.headers).bits(),
        allowed_origins: Cow::Borrowed(&record.allowed_origins),
        status: record.status,
        created_at: nanos(record.created_at),
        last_used_at: record.last_used_at.map(nanos),
    };
    postcard::to_allocvec(&packed)
        .expect("a record always serializes")
        .into_boxed_slice()
}

/// `None` only if `bytes` did not come from [`pack`] of this build.
pub fn unpack(bytes: &[u8]) -> Option<KeyRecord> {
    let p: Packed = postcard::from_bytes(bytes).ok()?;
    let [per_second, per_minute, per_hour, per_day, per_month, burst] = p.limits;
    Some(KeyRecord {
        id: p.id.into_owned(),
        name: p.name.into_owned(),
        owner: p.owner.into_owned(),
        key_type: p.key_type,
        env: p.env,
        scopes: p.scopes.into_owned(),
        allowed_cidrs: p.allowed_cidrs.into_owned(),
        expires_at: p.expires_at.map(time),
        plan: p.plan.map(Cow::into_owned),
        limits: Limits {
            per_second,
            per_minute,
            per_hour,
            per_day,
            per_month,
            burst,
        },
        workspace: p.workspace.map(Cow::into_owned),
        project: p.project.map(Cow::into_owned),
        headers: HeaderSet::from_bits(p.headers).iter().collect(),
        allowed_origins: p.allowed_origins.into_owned(),
        status: p.status,
        created_at: time(p.created_at),
        last_used_at: p.last_used_at.map(time),
        // Not packed: the request path never reads a key's hint or history.
        hint: None,
        created_by: None,
        revoked_at: None,
        revoked_by: None,
        rotated_from: None,
        rotated_to: None,
    })
}

/// Nanoseconds from the Unix epoch, negative before it.
fn nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

fn time(nanos: i128) -> SystemTime {
    let magnitude = Duration::from_nanos(nanos.unsigned_abs().min(u64::MAX as u128) as u64);
    if nanos >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_packing_and_are_small() {
        let plain = KeyRecord::for_tests();
        let mut full = KeyRecord::for_tests();
        full.name = "billing service, production".into();
        full.scopes = vec!["content:read".into(), "content:write".into()];
        full.allowed_cidrs = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        full.expires_at = Some(UNIX_EPOCH + Duration::new(1_900_000_000, 123));
        full.plan = Some("pro".into());
        full.limits.per_hour = Some(5000);
        full.limits.burst = Some(20);
        full.workspace = Some("ws_1".into());
        full.project = Some("proj_9".into());
        full.headers = vec![CredentialHeader::ProjectAccessToken];
        full.status = Status::Suspended;
        full.key_type = KeyType::Public;
        full.env = Environment::TEST;
        full.last_used_at = Some(SystemTime::now());
        let mut ancient = KeyRecord::for_tests();
        ancient.created_at = UNIX_EPOCH - Duration::from_secs(86_400);
        for record in [plain, full, ancient] {
            let bytes = pack(&record);
            assert!(bytes.len() < 160, "{} bytes", bytes.len());
            assert_eq!(unpack(&bytes).as_ref(), Some(&record));
        }
        assert_eq!(unpack(b"\xff\xff"), None);
    }
}
