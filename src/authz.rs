//! Authorization: may this (known) key make this request? Pure: record + request facts +
//! clock in, decision out. No I/O, so every rule is a row in a table test.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::credential::KeyClaims;
use crate::keys::{KeyRecord, Status};
use crate::reject::Reject;

/// What the request tells us, besides its key.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts {
    pub client_ip: IpAddr,
    pub now: SystemTime,
}

/// The checks run from "is this key alive at all" to "is it allowed here", so a revoked key
/// is reported as invalid rather than leaking that it would also be outside its allowlist.
pub fn authorize(
    record: &KeyRecord,
    claims: KeyClaims,
    facts: &RequestFacts,
) -> Result<(), Reject> {
    // The key string names its type and environment; a record that disagrees is not this
    // key's record (a hand-edited file, a store bug): treat it as unknown.
    if record.key_type != claims.key_type || record.env != claims.env {
        return Err(Reject::InvalidApiKey);
    }
    match record.status {
        Status::Active => {}
        Status::Revoked => return Err(Reject::InvalidApiKey),
        Status::Suspended => return Err(Reject::KeySuspended),
    }
    if record.expires_at.is_some_and(|at| at <= facts.now) {
        return Err(Reject::ExpiredApiKey);
    }
    if !record.allowed_cidrs.is_empty() {
        let ip = canonical(facts.client_ip);
        if !record.allowed_cidrs.iter().any(|net| net.contains(&ip)) {
            return Err(Reject::IpNotAllowed(ip));
        }
    }
    Ok(())
}

/// `::ffff:10.0.0.1` (an IPv4 client on a dual-stack socket) is the IPv4 address 10.0.0.1.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Environment, KeyType};
    use std::time::Duration;

    fn record() -> KeyRecord {
        KeyRecord {
            id: "key_1".into(),
            name: "n".into(),
            owner: "acme".into(),
            key_type: KeyType::Secret,
            env: Environment::Live,
            scopes: vec!["*".into()],
            allowed_cidrs: vec![],
            expires_at: None,
            plan: None,
            status: Status::Active,
            created_at: SystemTime::UNIX_EPOCH,
            last_used_at: None,
        }
    }

    const SK_LIVE: KeyClaims = KeyClaims {
        key_type: KeyType::Secret,
        env: Environment::Live,
    };

    #[test]
    fn table() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let nets = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect::<Vec<_>>();
        type Case = (
            &'static str,
            KeyRecord,
            KeyClaims,
            &'static str,
            Result<(), Reject>,
        );
        let with = |f: &dyn Fn(&mut KeyRecord)| {
            let mut r = record();
            f(&mut r);
            r
        };
        let cases: Vec<Case> = vec![
            ("active key", record(), SK_LIVE, "1.2.3.4", Ok(())),
            (
                "revoked",
                with(&|r| r.status = Status::Revoked),
                SK_LIVE,
                "1.2.3.4",
                Err(Reject::InvalidApiKey),
            ),
            (
                "suspended",
                with(&|r| r.status = Status::Suspended),
                SK_LIVE,
                "1.2.3.4",
                Err(Reject::KeySuspended),
            ),
            (
                "expires in future",
                with(&|r| r.expires_at = Some(now + Duration::from_secs(1))),
                SK_LIVE,
                "1.2.3.4",
                Ok(()),
            ),
            (
                "expires exactly now",
                with(&|r| r.expires_at = Some(now)),
                SK_LIVE,
                "1.2.3.4",
                Err(Reject::ExpiredApiKey),
            ),
            (
                "expired",
                with(&|r| r.expires_at = Some(now - Duration::from_secs(1))),
                SK_LIVE,
                "1.2.3.4",
                Err(Reject::ExpiredApiKey),
            ),
            (
                "revoked beats expired",
                with(&|r| {
                    r.status = Status::Revoked;
                    r.expires_at = Some(now)
                }),
                SK_LIVE,
                "1.2.3.4",
                Err(Reject::InvalidApiKey),
            ),
            (
                "type mismatch",
                record(),
                KeyClaims {
                    key_type: KeyType::Public,
                    env: Environment::Live,
                },
                "1.2.3.4",
                Err(Reject::InvalidApiKey),
            ),
            (
                "env mismatch",
                record(),
                KeyClaims {
                    key_type: KeyType::Secret,
                    env: Environment::Test,
                },
                "1.2.3.4",
                Err(Reject::InvalidApiKey),
            ),
            (
                "ip in v4 allowlist",
                with(&|r| r.allowed_cidrs = nets(&["10.0.0.0/24"])),
                SK_LIVE,
                "10.0.0.7",
                Ok(()),
            ),
            (
                "ip outside v4 allowlist",
                with(&|r| r.allowed_cidrs = nets(&["10.0.0.0/24"])),
                SK_LIVE,
                "10.0.1.7",
                Err(Reject::IpNotAllowed(ip("10.0.1.7"))),
            ),
            (
                "v4-mapped v6 client in v4 list",
                with(&|r| r.allowed_cidrs = nets(&["10.0.0.0/24"])),
                SK_LIVE,
                "::ffff:10.0.0.7",
                Ok(()),
            ),
            (
                "v4-mapped reported as v4",
                with(&|r| r.allowed_cidrs = nets(&["10.0.0.0/24"])),
                SK_LIVE,
                "::ffff:10.9.0.7",
                Err(Reject::IpNotAllowed(ip("10.9.0.7"))),
            ),
            (
                "ip in v6 allowlist",
                with(&|r| r.allowed_cidrs = nets(&["2001:db8::/32"])),
                SK_LIVE,
                "2001:db8::1",
                Ok(()),
            ),
            (
                "v6 outside",
                with(&|r| r.allowed_cidrs = nets(&["2001:db8::/32"])),
                SK_LIVE,
                "2001:db9::1",
                Err(Reject::IpNotAllowed(ip("2001:db9::1"))),
            ),
            (
                "second of two nets",
                with(&|r| r.allowed_cidrs = nets(&["10.0.0.0/24", "192.168.1.5/32"])),
                SK_LIVE,
                "192.168.1.5",
                Ok(()),
            ),
            (
                "expired beats ip",
                with(&|r| {
                    r.allowed_cidrs = nets(&["10.0.0.0/24"]);
                    r.expires_at = Some(now)
                }),
                SK_LIVE,
                "8.8.8.8",
                Err(Reject::ExpiredApiKey),
            ),
        ];
        for (name, rec, claims, client, want) in cases {
            let facts = RequestFacts {
                client_ip: ip(client),
                now,
            };
            assert_eq!(authorize(&rec, claims, &facts), want, "case {name}");
        }
    }
}
