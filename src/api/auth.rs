//! Who may manage what: the management scopes, pure functions of the caller's scopes and the
//! target's owner and scopes, each a row in a table test.
//!
//! - `keygate:keys:read`: list, show, usage and the audit trail, for every owner.
//! - `keygate:keys:write`: that, plus create, update, suspend, resume, revoke, rotate.
//! - `keygate:keys:own`: read and write, but only keys of the caller's own owner (a customer's
//!   portal managing its own keys with its own key); `[keys] max_per_owner` caps what it can
//!   create.
//! - `keygate:keys:verify`: `POST /v1/keys/verify` (also allowed with read or write).
//!
//! Management scopes are never granted by a wildcard outside their namespace: a key holding
//! `*` (all proxied scopes) is not a management key; `keygate:*` or `keygate:keys:*` are.
//! No key grants, or manages a key holding, a scope it does not hold itself.

use crate::reject::Denial;
use crate::routes::grants;

pub const READ: &str = "keygate:keys:read";
pub const WRITE: &str = "keygate:keys:write";
pub const OWN: &str = "keygate:keys:own";
pub const VERIFY: &str = "keygate:keys:verify";

/// The namespace of management scopes.
const NAMESPACE: &str = "keygate:";

/// What an action needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
    Verify,
}

/// Which keys the caller may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    All,
    /// Only keys of this owner.
    Owner(String),
}

impl Reach {
    /// Whether a key of `owner` is within reach. Out of reach reads as "no such key": an
    /// owner-bound caller learns nothing about other owners' keys, not even that they exist.
    pub fn covers(&self, owner: &str) -> bool {
        match self {
            Reach::All => true,
            Reach::Owner(mine) => mine == owner,
        }
    }
}

/// Whether `held` grants `required`, management scopes only from their own namespace.
pub fn grants_strictly(held: &str, required: &str) -> bool {
    if required.starts_with(NAMESPACE) {
        return held.starts_with(NAMESPACE) && grants(held, required);
    }
    grants(held, required)
}

fn holds(held: &[String], scope: &str) -> bool {
    held.iter().any(|h| grants_strictly(h, scope))
}

/// The reach a caller holding `held` (a key of `owner`) has for `need`, or why it has none.
pub fn access(held: &[String], owner: &str, need: Need) -> Result<Reach, Denial> {
    let missing = |scopes: &[&str]| {
        Err(Denial::MissingScope(
            scopes.iter().map(|s| (*s).to_owned()).collect(),
        ))
    };
    match need {
        Need::Read if holds(held, READ) || holds(held, WRITE) => Ok(Reach::All),
        Need::Write if holds(held, WRITE) => Ok(Reach::All),
        Need::Read | Need::Write if holds(held, OWN) => Ok(Reach::Owner(owner.to_owned())),
        Need::Read => missing(&[READ, WRITE, OWN]),
        Need::Write => missing(&[WRITE, OWN]),
        Need::Verify if holds(held, VERIFY) || holds(held, READ) || holds(held, WRITE) => {
            Ok(Reach::All)
        }
        Need::Verify => missing(&[VERIFY]),
    }
}

/// The scopes of `wanted` that `held` does not cover: a key may only grant, or manage a key
/// holding, scopes it holds itself.
pub fn not_held(held: &[String], wanted: &[String]) -> Vec<String> {
    wanted.iter().filter(|w| !holds(held, w)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn access_by_scope() {
        use Need::*;
        let all = Ok(Reach::All);
        let own = Ok(Reach::Owner("acme".into()));
        let cases: &[(&[&str], Need, Result<Reach, ()>)] = &[
            (&[READ], Read, all.clone()),
            (&[READ], Write, Err(())),
            (&[WRITE], Read, all.clone()),
            (&[WRITE], Write, all.clone()),
            (&[OWN], Read, own.clone()),
            (&[OWN], Write, own.clone()),
            (&[OWN, READ], Read, all.clone()),
            (&[OWN, READ], Write, own.clone()),
            (&["keygate:*"], Write, all.clone()),
            (&["keygate:keys:*"], Write, all.clone()),
            // `*` is every proxied scope, not a management one.
            (&["*"], Read, Err(())),
            (&["*"], Write, Err(())),
            (&["*"], Verify, Err(())),
            (&["content:read"], Read, Err(())),
            (&[VERIFY], Verify, all.clone()),
            (&[VERIFY], Read, Err(())),
            (&[READ], Verify, all.clone()),
            (&[OWN], Verify, Err(())),
        ];
        for (held, need, want) in cases {
            let got = access(&v(held), "acme", *need).map_err(|_| ());
            assert_eq!(&got, want, "{held:?} {need:?}");
        }
    }

    #[test]
    fn only_held_scopes_are_granted() {
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (&["*", WRITE], &["content:read", WRITE], &[]),
            (&["*", WRITE], &["*"], &[]),
            (&[WRITE], &["content:read"], &["content:read"]),
            (&["content:*", OWN], &["content:read", "content:*"], &[]),
            (
                &["content:*", OWN],
                &["*", "billing:read"],
                &["*", "billing:read"],
            ),
            (&["content:*", OWN], &[WRITE], &[WRITE]),
            (&["*"], &[READ], &[READ]),
            (&["keygate:*"], &[WRITE, OWN], &[]),
            (&["keygate:keys:*"], &["keygate:*"], &["keygate:*"]),
        ];
        for (held, wanted, missing) in cases {
            assert_eq!(
                not_held(&v(held), &v(wanted)),
                v(missing),
                "{held:?} {wanted:?}"
            );
        }
    }

    #[test]
    fn owner_reach() {
        assert!(Reach::All.covers("x"));
        assert!(Reach::Owner("a".into()).covers("a"));
        assert!(!Reach::Owner("a".into()).covers("b"));
    }
}
