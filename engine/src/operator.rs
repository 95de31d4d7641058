//! Operators: the people and tools that use the admin API and the console, each with a role
//! that says what they may do. A `viewer` reads; a `team-admin` also manages the keys and
//! allocations of its one team; an `admin` does everything (the admin token is one).
//!
//! An operator's credential is a secret shown once (`tgo_` and 40 hex digits); only its
//! SHA-256 is stored, as a key's is. The store is copied on write (admin changes are rare) and
//! read without a lock.
//!
//! **Invariant:** a decision is [`Operator::may`] on what a request needs, made once per
//! request from the role alone; a revoked operator may do nothing.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::identity::KeyHash;
use crate::time::UnixMs;

/// The text every operator credential starts with.
pub const OPERATOR_PREFIX: &str = "tgo_";

/// Random bytes an operator's secret is made of.
pub const OPERATOR_SECRET_BYTES: usize = 20;

/// What an operator may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Reads spend, keys, allocations, rate cards; changes nothing.
    #[serde(rename = "viewer")]
    Viewer,
    /// Reads, and manages the keys and allocations of its team.
    #[serde(rename = "team-admin")]
    TeamAdmin,
    /// Everything, operators included.
    #[serde(rename = "admin")]
    Admin,
}

impl Role {
    /// As the API and the CLI write it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::TeamAdmin => "team-admin",
            Role::Admin => "admin",
        }
    }

    /// The role named `text`.
    pub fn parse(text: &str) -> Result<Role> {
        [Role::Viewer, Role::TeamAdmin, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| Error::Unknown {
                kind: "role",
                name: text.chars().take(40).collect(),
            })
    }
}

/// What a request needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need<'a> {
    /// Reading: every role.
    Read,
    /// Changing what belongs to team `0`: its team-admin, or an admin.
    Team(&'a str),
    /// Changing what is no one team's (operators, the rate card, a team's own budget).
    Admin,
}

/// The public id of an operator: the first eight bytes of its hash, `op_` and 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperatorId(pub u64);

impl OperatorId {
    /// Parses `op_` followed by 16 hex digits.
    pub fn parse(text: &str) -> Result<OperatorId> {
        text.strip_prefix("op_")
            .filter(|hex| hex.len() == 16)
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .map(OperatorId)
            .ok_or_else(|| Error::Unknown {
                kind: "operator",
                name: text.chars().take(40).collect(),
            })
    }
}

impl fmt::Display for OperatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op_{:016x}", self.0)
    }
}

impl fmt::Debug for OperatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for OperatorId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OperatorId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        OperatorId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A freshly made operator's secret, shown once and then forgotten.
pub struct OperatorSecret(String);

impl OperatorSecret {
    /// Makes a secret from `random` (at least [`OPERATOR_SECRET_BYTES`] bytes from a CSPRNG).
    pub fn from_random(random: &[u8]) -> Result<OperatorSecret> {
        let bytes = random
            .get(..OPERATOR_SECRET_BYTES)
            .ok_or(Error::NotEnoughEntropy {
                needed: OPERATOR_SECRET_BYTES,
                got: random.len(),
            })?;
        let mut text = String::with_capacity(OPERATOR_PREFIX.len() + 2 * bytes.len());
        text.push_str(OPERATOR_PREFIX);
        for b in bytes {
            use std::fmt::Write as _;
            let _ = write!(text, "{b:02x}");
        }
        Ok(OperatorSecret(text))
    }

    /// The secret, to show once.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OperatorSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OperatorSecret(<redacted>)")
    }
}

/// How an operator is described when made or restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorSpec {
    /// Who it is, as the audit log names it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The team of a `team-admin`; `None` for any other role.
    pub team: Option<String>,
    /// When it was made.
    pub created_at: UnixMs,
}

/// An operator as stored: its hash, never its secret.
#[derive(Debug)]
pub struct Operator {
    hash: KeyHash,
    /// Who it is.
    pub name: Arc<str>,
    /// What it may do.
    pub role: Role,
    /// The team of a `team-admin`.
    pub team: Option<Arc<str>>,
    /// When it was made.
    pub created_at: UnixMs,
    revoked: AtomicBool,
}

impl Operator {
    /// Its public id.
    #[must_use]
    pub fn id(&self) -> OperatorId {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.hash.0[..8]);
        OperatorId(u64::from_be_bytes(first))
    }

    /// Whether it has been revoked.
    #[must_use]
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Whether it may do what `need` says.
    #[must_use]
    pub fn may(&self, need: Need<'_>) -> bool {
        if self.is_revoked() {
            return false;
        }
        match (self.role, need) {
            (Role::Admin, _) | (_, Need::Read) => true,
            (Role::TeamAdmin, Need::Team(team)) => self.team.as_deref() == Some(team),
            (Role::TeamAdmin | Role::Viewer, Need::Admin) | (Role::Viewer, Need::Team(_)) => false,
        }
    }
}

/// Every operator, by the hash of its secret.
#[derive(Default)]
pub struct OperatorStore {
    by_hash: ArcSwap<HashMap<[u8; 32], Arc<Operator>>>,
}

impl fmt::Debug for OperatorStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorStore")
            .field("operators", &self.by_hash.load().len())
            .finish()
    }
}

impl OperatorStore {
    /// Makes an operator of `spec` with a secret from `random`; its secret is returned once.
    pub fn create(
        &self,
        spec: OperatorSpec,
        random: &[u8],
    ) -> Result<(Arc<Operator>, OperatorSecret)> {
        let secret = OperatorSecret::from_random(random)?;
        let operator = self.restore(KeyHash::of(secret.expose()), spec, false)?;
        Ok((operator, secret))
    }

    /// Puts back an operator journaled or shared before, by its hash; one already there is
    /// left as it is (and returned).
    pub fn restore(
        &self,
        hash: KeyHash,
        spec: OperatorSpec,
        revoked: bool,
    ) -> Result<Arc<Operator>> {
        if (spec.role == Role::TeamAdmin) != spec.team.is_some() {
            return Err(Error::OperatorTeam {
                role: spec.role.as_str(),
                reason: if spec.team.is_some() {
                    "takes no team"
                } else {
                    "needs a team"
                },
            });
        }
        if let Some(found) = self.by_hash.load().get(&hash.0) {
            return Ok(Arc::clone(found));
        }
        let operator = Arc::new(Operator {
            hash,
            name: Arc::from(spec.name),
            role: spec.role,
            team: spec.team.map(Arc::from),
            created_at: spec.created_at,
            revoked: AtomicBool::new(revoked),
        });
        self.by_hash.rcu(|all| {
            let mut all = HashMap::clone(all);
            all.entry(hash.0).or_insert_with(|| Arc::clone(&operator));
            all
        });
        Ok(operator)
    }

    /// The usable operator whose secret is `presented`, if any.
    #[must_use]
    pub fn resolve(&self, presented: &str) -> Option<Arc<Operator>> {
        if !presented.starts_with(OPERATOR_PREFIX) {
            return None;
        }
        let wanted = KeyHash::of(presented);
        let all = self.by_hash.load();
        let found = all.get(&wanted.0)?;
        (found.hash.matches(&wanted) && !found.is_revoked()).then(|| Arc::clone(found))
    }

    /// Revokes operator `id`; it is refused from now on.
    pub fn revoke(&self, id: OperatorId) -> Result<Arc<Operator>> {
        let all = self.by_hash.load();
        let operator = all
            .values()
            .find(|o| o.id() == id)
            .ok_or_else(|| Error::Unknown {
                kind: "operator",
                name: id.to_string(),
            })?;
        operator.revoked.store(true, Ordering::Release);
        Ok(Arc::clone(operator))
    }

    /// Every operator, by creation time.
    #[must_use]
    pub fn list(&self) -> Vec<Arc<Operator>> {
        let mut all: Vec<_> = self.by_hash.load().values().cloned().collect();
        all.sort_by_key(|o| (o.created_at, o.id()));
        all
    }

    /// The hash an operator is stored under, for its journal record.
    #[must_use]
    pub fn hash_of(operator: &Operator) -> KeyHash {
        operator.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(role: Role, team: Option<&str>) -> OperatorSpec {
        OperatorSpec {
            name: "ada".into(),
            role,
            team: team.map(str::to_owned),
            created_at: UnixMs(0),
        }
    }

    #[test]
    fn each_role_may_do_what_it_says_and_a_revoked_one_nothing() {
        let store = OperatorStore::default();
        let (viewer, _) = store.create(spec(Role::Viewer, None), &[1; 20]).unwrap();
        let (research, _) = store
            .create(spec(Role::TeamAdmin, Some("research")), &[2; 20])
            .unwrap();
        let (admin, _) = store.create(spec(Role::Admin, None), &[3; 20]).unwrap();
        let needs = [
            Need::Read,
            Need::Team("research"),
            Need::Team("support"),
            Need::Admin,
        ];
        let may = |o: &Operator| needs.map(|n| o.may(n));
        assert_eq!(may(&viewer), [true, false, false, false]);
        assert_eq!(may(&research), [true, true, false, false]);
        assert_eq!(may(&admin), [true, true, true, true]);
        store.revoke(admin.id()).unwrap();
        assert_eq!(may(&admin), [false; 4]);
        assert!(store.revoke(OperatorId(7)).is_err());
    }

    #[test]
    fn secrets_resolve_once_made_and_never_after_revocation() {
        let store = OperatorStore::default();
        let (made, secret) = store.create(spec(Role::Viewer, None), &[9; 20]).unwrap();
        assert!(secret.expose().starts_with("tgo_0909"));
        assert_eq!(secret.expose().len(), 4 + 40);
        assert_eq!(format!("{secret:?}"), "OperatorSecret(<redacted>)");
        assert_eq!(store.resolve(secret.expose()).unwrap().id(), made.id());
        assert!(store.resolve("tgo_nope").is_none());
        assert!(store.resolve("tg_0909").is_none());
        assert_eq!(
            OperatorId::parse(&made.id().to_string()).unwrap(),
            made.id()
        );
        store.revoke(made.id()).unwrap();
        assert!(store.resolve(secret.expose()).is_none());
        // Restored from its hash, revoked: still refused.
        let other = OperatorStore::default();
        other
            .restore(
                OperatorStore::hash_of(&made),
                spec(Role::Viewer, None),
                true,
            )
            .unwrap();
        assert!(other.resolve(secret.expose()).is_none());
    }

    #[test]
    fn a_team_admin_names_its_team_and_no_one_else_does() {
        let store = OperatorStore::default();
        assert!(store.create(spec(Role::TeamAdmin, None), &[1; 20]).is_err());
        assert!(
            store
                .create(spec(Role::Viewer, Some("x")), &[1; 20])
                .is_err()
        );
        assert!(store.create(spec(Role::Viewer, None), &[1; 19]).is_err());
        assert_eq!(Role::parse("team-admin").unwrap(), Role::TeamAdmin);
        assert!(Role::parse("root").is_err());
    }
}
