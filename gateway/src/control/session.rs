//! The console's sign-ins: a session is made from an admin credential (the admin token or an
//! operator's secret), named by a random cookie, and lasts `console.session_ttl_ms`.
//!
//! The table holds the SHA-256 of each session's id, never the id (as keys are kept), with who
//! signed in and the session's CSRF token; every change a session makes must carry that token
//! in a header, which a page of another site can neither read nor send.
//!
//! **Invariant:** a session is never more than its credential: it resolves to the operator
//! itself, so revoking the operator ends its sessions at once, and its role is read from the
//! operator on every request.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tollgate_engine::operator::Operator;
use tollgate_engine::{KeyHash, UnixMs};

use super::access::Caller;
use crate::clock::millis;
use crate::limits::CONSOLE_SESSIONS_MAX;

/// The session cookie's name.
pub const COOKIE: &str = "tollgate_session";

/// The header a session's changes carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-tollgate-csrf";

/// Who a session speaks for.
#[derive(Clone, Debug)]
pub enum Signed {
    /// The admin token's holder.
    Root,
    /// An operator (revoking it ends the session).
    Operator(Arc<Operator>),
}

impl Signed {
    /// The caller the admin API sees, or `None` once the operator is revoked.
    #[must_use]
    pub fn caller(&self) -> Option<Caller> {
        match self {
            Signed::Root => Some(Caller::Root),
            Signed::Operator(operator) if operator.is_revoked() => None,
            Signed::Operator(operator) => Some(Caller::Operator(Arc::clone(operator))),
        }
    }
}

/// One sign-in.
#[derive(Clone, Debug)]
pub struct Session {
    /// Who signed in.
    pub signed: Signed,
    /// The token its changes must carry in [`CSRF_HEADER`] (64 hex digits).
    pub csrf: Arc<str>,
    /// When it ends.
    pub expires_at: UnixMs,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (compared in constant time).
    #[must_use]
    pub fn csrf_matches(&self, presented: &str) -> bool {
        KeyHash::of(&self.csrf).matches(&KeyHash::of(presented))
    }
}

/// A new session's id (for the cookie, shown once) and the session.
#[derive(Debug)]
pub struct Opened {
    /// The cookie's value: 64 hex digits from the operating system's random source.
    pub id: String,
    /// What was stored under its hash.
    pub session: Session,
}

/// The console's sessions on this replica, bounded by [`CONSOLE_SESSIONS_MAX`].
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

/// No random bytes could be had from the operating system: no session is made without them.
#[derive(Debug, thiserror::Error)]
#[error("the operating system gave no random bytes for a session id: {0}")]
pub struct NoRandom(String);

impl Sessions {
    /// Sessions lasting `ttl` each.
    #[must_use]
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            by_hash: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lasts.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Opens a session for `signed` at `now`. At the bound, expired sessions go first, then
    /// the one that ends soonest.
    pub fn open(&self, signed: Signed, now: UnixMs) -> Result<Opened, NoRandom> {
        let mut random = [0u8; 64];
        getrandom::fill(&mut random).map_err(|e| NoRandom(e.to_string()))?;
        let (id, csrf) = random.split_at(32);
        let (id, csrf) = (hex(id), hex(csrf));
        let session = Session {
            signed,
            csrf: Arc::from(csrf),
            expires_at: UnixMs(now.0.saturating_add(millis(self.ttl))),
        };
        let mut all = self.by_hash.lock().unwrap_or_else(PoisonError::into_inner);
        if all.len() >= CONSOLE_SESSIONS_MAX {
            all.retain(|_, s| s.expires_at > now);
        }
        if all.len() >= CONSOLE_SESSIONS_MAX
            && let Some(soonest) = all
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(hash, _)| *hash)
        {
            all.remove(&soonest);
        }
        all.insert(KeyHash::of(&id).0, session.clone());
        Ok(Opened { id, session })
    }

    /// The live session the cookie value `id` names at `now`; an expired one is removed.
    #[must_use]
    pub fn get(&self, id: &str, now: UnixMs) -> Option<Session> {
        let hash = KeyHash::of(id).0;
        let mut all = self.by_hash.lock().unwrap_or_else(PoisonError::into_inner);
        match all.get(&hash) {
            Some(session) if session.expires_at > now => Some(session.clone()),
            Some(_) => {
                all.remove(&hash);
                None
            }
            None => None,
        }
    }

    /// Ends the session `id` names; whether there was one.
    pub fn close(&self, id: &str) -> bool {
        let hash = KeyHash::of(id).0;
        self.by_hash
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&hash)
            .is_some()
    }

    /// Sessions held (expired ones not yet swept included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_hash
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether none is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `bytes` as lower-case hex digits.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The value of cookie `name` in a `Cookie` header's text, if it is there once.
#[must_use]
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    let mut found = None;
    for pair in header.split(';') {
        let Some((key, value)) = pair.trim().split_once('=') else {
            continue;
        };
        if key.trim() == name {
            if found.is_some() {
                // Two cookies of one name (one planted by a sibling domain, say): neither.
                return None;
            }
            found = Some(value.trim());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_engine::operator::{OperatorSpec, OperatorStore, Role};

    #[test]
    fn a_session_lasts_its_time_and_ends_with_its_operator() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let now = UnixMs(1_000_000);
        let root = sessions.open(Signed::Root, now).unwrap();
        assert_eq!(root.id.len(), 64);
        assert_eq!(root.session.csrf.len(), 64);
        assert_ne!(&*root.session.csrf, root.id);
        assert!(sessions.get(&root.id, UnixMs(now.0 + 59_999)).is_some());
        assert!(sessions.get(&root.id, UnixMs(now.0 + 60_000)).is_none());
        assert!(sessions.is_empty(), "the expired session was removed");

        let store = OperatorStore::default();
        let spec = OperatorSpec {
            name: "fin".to_owned(),
            role: Role::Viewer,
            team: None,
            created_at: now,
        };
        let (operator, _) = store.create(spec, &[7; 32]).unwrap();
        let opened = sessions
            .open(Signed::Operator(Arc::clone(&operator)), now)
            .unwrap();
        let session = sessions.get(&opened.id, now).unwrap();
        assert!(session.signed.caller().is_some());
        assert!(session.csrf_matches(&opened.session.csrf));
        assert!(!session.csrf_matches(&opened.id));
        assert!(!session.csrf_matches(""));
        store.revoke(operator.id()).unwrap();
        assert!(session.signed.caller().is_none(), "revoked: no caller");
        assert!(sessions.close(&opened.id));
        assert!(!sessions.close(&opened.id));
        assert!(sessions.get("not a session", now).is_none());
    }

    #[test]
    fn the_table_is_bounded_and_sheds_the_session_ending_soonest() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let first = sessions.open(Signed::Root, UnixMs(0)).unwrap();
        for i in 1..CONSOLE_SESSIONS_MAX {
            let _ = sessions.open(Signed::Root, UnixMs(i as i64)).unwrap();
        }
        assert_eq!(sessions.len(), CONSOLE_SESSIONS_MAX);
        let last = sessions.open(Signed::Root, UnixMs(20_000)).unwrap();
        assert_eq!(sessions.len(), CONSOLE_SESSIONS_MAX);
        assert!(sessions.get(&first.id, UnixMs(20_000)).is_none());
        assert!(sessions.get(&last.id, UnixMs(20_000)).is_some());
    }

    #[test]
    fn a_cookie_is_found_by_name_once() {
        let header = "theme=dark; tollgate_session=abc ; other=1";
        assert_eq!(cookie(header, COOKIE), Some("abc"));
        assert_eq!(
            cookie("tollgate_session=a; tollgate_session=b", COOKIE),
            None
        );
        assert_eq!(cookie("tollgate_sessionx=a", COOKIE), None);
        assert_eq!(cookie("", COOKIE), None);
        assert_eq!(cookie(";;=;tollgate_session", COOKIE), None);
    }
}
