//! Authorization: may this (known) key make this request? Pure: record + request facts +
//! policy in, decision out. No I/O and no clock of its own, so every rule is a row in a table
//! test.

use std::net::IpAddr;
use std::time::SystemTime;

use http::Method;

use crate::credential::{HeaderSet, KeyClaims};
use crate::keys::cached_key::CachedKey;
use crate::reject::{Denial, Reject};
use crate::routes::{Found, RouteTable, Unmatched, grants};
use crate::vocab::{Environment, KeyType, Status};

/// What the request tells us, besides its key.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    /// Normalized (see [`crate::path::normalize`]).
    pub path: &'a str,
    pub client_ip: IpAddr,
    pub now: SystemTime,
    /// The headers the key arrived in.
    pub via: HeaderSet,
    /// An access token's scopes (a subset of its key's); empty: all the key's.
    pub narrowed: &'a [String],
}

/// The configured rules a key is held to.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub routes: &'a RouteTable,
    /// Whether sandbox keys have an upstream of their own; without one they are refused.
    pub sandbox_upstream: bool,
    /// The environments served (`live`, `test` and `[environments.<tag>]`); keys of any
    /// other are refused.
    pub environments: &'a [Environment],
}

/// Runs the checks from "is this key alive at all" to "may it do this here", so a revoked
/// key is reported as invalid rather than leaking that it is also outside its allowlist, and
/// a key from a forbidden address learns nothing about routes.
pub fn authorize(
    record: &CachedKey,
    claims: KeyClaims,
    facts: &RequestFacts,
    policy: &Policy,
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
    if record.expires_at().is_some_and(|at| at <= facts.now) {
        return Err(Reject::ExpiredApiKey);
    }
    arrival(record.headers(), facts.via)?;
    let allowed = record.allowed_cidrs();
    if !allowed.is_empty() {
        let ip = canonical(facts.client_ip);
        if !allowed.iter().any(|net| net.contains(&ip)) {
            return Err(Reject::IpNotAllowed(ip));
        }
    }
    let deny = |d| Err(Reject::InsufficientPermissions(d));
    if record.env == Environment::TEST && !policy.sandbox_upstream {
        return deny(Denial::SandboxRefused);
    }
    if !policy.environments.contains(&record.env) {
        return deny(Denial::NotServed(record.env));
    }
    if record.key_type == KeyType::Public && !is_safe(facts.method) {
        return deny(Denial::PublicKeyReadOnly);
    }

    let (route, captures) = match policy.routes.find(facts.method, facts.path) {
        Found::Rule(route, captures) => (route, captures),
        // Rules for this path exist, for other methods: never the `unmatched` policy, which
        // may be more permissive than the rules written for this path.
        Found::OtherMethods => {
            return Err(Reject::MethodNotAllowed(
                policy.routes.allowed_methods(facts.path),
            ));
        }
        Found::Unmatched => {
            return match &policy.routes.unmatched {
                Unmatched::Allow => Ok(()),
                Unmatched::Deny => deny(Denial::NoRoute),
                Unmatched::Scope(scope) if holds(record, facts.narrowed, scope) => Ok(()),
                Unmatched::Scope(scope) => deny(Denial::MissingScope(vec![scope.clone()])),
            };
        }
    };
    if !route.environments.contains(&record.env) {
        return deny(Denial::Environment(record.env));
    }
    if !route.scopes.is_empty()
        && !route
            .scopes
            .iter()
            .any(|s| holds(record, facts.narrowed, s))
    {
        return deny(Denial::MissingScope(route.scopes.clone()));
    }
    if let Some(missing) = route
        .scopes_all
        .iter()
        .find(|s| !holds(record, facts.narrowed, s))
    {
        return deny(Denial::MissingScope(vec![missing.clone()]));
    }
    for (param, value) in captures {
        let (param, bound) = match param {
            "workspace" => ("workspace", record.workspace()),
            "project" => ("project", record.project()),
            _ => continue,
        };
        if bound != Some(value) {
            return deny(Denial::NotBound {
                param,
                value: value.to_owned(),
            });
        }
    }
    Ok(())
}

/// A header-bound key (`keys create --header`, Railway's project tokens) arrives only in its
/// headers: in any other it is refused, even beside an allowed one, so a client learns where
/// to send it instead of having it work by accident. `allowed` empty: any header.
pub fn arrival(allowed: HeaderSet, via: HeaderSet) -> Result<(), Reject> {
    if allowed.is_empty() || via.is_subset(allowed) {
        Ok(())
    } else {
        Err(Reject::CredentialHeaderNotAllowed(allowed))
    }
}

/// The key holds `required`, and so does the token it came as, if any.
fn holds(record: &CachedKey, narrowed: &[String], required: &str) -> bool {
    record.scopes.iter().any(|held| grants(held, required))
        && (narrowed.is_empty() || narrowed.iter().any(|held| grants(held, required)))
}

/// Methods that only read (RFC 9110 §9.2.1, less TRACE which we do not want keys to use).
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
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
mod tests;
