//! What the admin API changes, kept across restarts: an append-only journal and an audit log.
//!
//! `journal.jsonl` holds one record per change: a key created (with its scopes) or revoked, an allocation
//! created, a budget limit set, a spend guard's block placed or cleared. At start the gateway replays it, in order, on top of the config. Each record is written and synced before the admin API
//! answers, so an acknowledged key survives a crash. Only key hashes are stored, never a key.
//! `audit.jsonl` records who did what and when, for every admin action.
//!
//! A journal whose last line was cut by a crash is read up to that line (the cut record was
//! never acknowledged); a malformed line anywhere else stops start-up with its line number.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tollgate_engine::guard::Guard;
use tollgate_engine::operator::{OperatorId, OperatorStore, Role};

use crate::config::Scope;
use crate::guards::{Block, Guards};
use tollgate_engine::{
    Allocation, AllocationSpec, AllowList, BudgetSpec, Directory, KeyHash, KeyId, KeyLimits,
    KeySpec, KeyStore, Level, Nanos, Scopes, Tight, UnixMs, VirtualKey,
};

/// The journal of admin changes in the state folder: one JSON record a line, replayed at start.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// The audit log in the state folder: who changed what and when, one JSON line each, never
/// read back by the gateway.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// One journal record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// A key was created.
    Create {
        /// The key's public id (derived from its hash, checked at replay).
        id: KeyId,
        /// SHA-256 of the secret, hex.
        hash: String,
        /// First characters of the secret, for people to tell keys apart.
        prefix: String,
        /// The allocation its calls are charged to, by name.
        allocation: String,
        /// The user the key belongs to, as written in every usage event.
        user: String,
        /// The agent the key is for, if it names one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        /// When the key stops working, in Unix milliseconds; never when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<i64>,
        /// The key's own allow-list; empty allows what the allocation allows.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        models: Vec<String>,
        /// The key's own requests-per-minute limit, if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requests_per_minute: Option<NonZeroU32>,
        /// The key's own tokens-per-minute limit, if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokens_per_minute: Option<NonZeroU32>,
        /// What it may do besides calling models (`metering`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        scopes: Vec<String>,
        /// Its own `tight` policy over its allocation's (added within the journal's format:
        /// records without it follow the allocation's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tight: Option<Tight>,
        /// When it was made, in Unix milliseconds.
        created_at_ms: i64,
    },
    /// A key was revoked.
    Revoke {
        /// The revoked key's public id.
        id: KeyId,
        /// When it was revoked, in Unix milliseconds.
        at_ms: i64,
    },
    /// An allocation was created.
    CreateAllocation {
        /// The new allocation's name, unique in the directory.
        name: String,
        /// The project it belongs to (and through it the team).
        project: String,
        /// The cost center its spend is charged to in chargeback.
        #[serde(default)]
        cost_center: String,
        /// Allow-list; empty allows every priced model.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        models: Vec<String>,
        /// Its limit, soft limit and period.
        budget: BudgetSpec,
        /// What its calls do when their whole bound does not fit (added within the journal's
        /// format: records without it read as the default, `clamp`).
        #[serde(default, skip_serializing_if = "is_clamp")]
        tight: Tight,
    },
    /// A budget limit was changed.
    SetLimit {
        /// `team`, `project` or `allocation`.
        level: Level,
        /// The team's, project's or allocation's name.
        name: String,
        /// The new limit; `None` counts without limiting.
        limit: Option<Nanos>,
    },
    /// A spend guard blocked a key, agent or allocation until an operator clears it.
    GuardBlock {
        /// The guard that placed it.
        guard: Guard,
        /// `key`, `agent` or `allocation`.
        scope: Scope,
        /// Its key id, agent name or allocation name.
        name: String,
        /// When it was placed, in Unix milliseconds.
        at_ms: i64,
        /// What tripped, in words (never prompt text).
        reason: String,
    },
    /// An operator of the admin API was made (its secret's hash, never the secret).
    CreateOperator {
        /// Its public id (derived from the hash).
        id: OperatorId,
        /// SHA-256 of its secret, hex.
        hash: String,
        /// Who it is.
        name: String,
        /// What it may do.
        role: Role,
        /// The team of a team-admin.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        team: Option<String>,
        /// When it was made, in Unix milliseconds.
        created_at_ms: i64,
    },
    /// An operator was revoked.
    RevokeOperator {
        /// Its public id.
        id: OperatorId,
        /// When, in Unix milliseconds.
        at_ms: i64,
    },
    /// An operator cleared a block.
    GuardClear {
        /// `key`, `agent` or `allocation`.
        scope: Scope,
        /// Its key id, agent name or allocation name.
        name: String,
        /// When it was cleared, in Unix milliseconds.
        at_ms: i64,
    },
}

impl Record {
    /// The record of `block`.
    #[must_use]
    pub fn block(block: &Block) -> Record {
        Record::GuardBlock {
            guard: block.guard,
            scope: block.scope,
            name: block.name.to_string(),
            at_ms: block.at.0,
            reason: block.reason.clone(),
        }
    }
}

/// Applies a guard record to `guards` (at replay, and from the control topic): a block put
/// back unless one is there, a clear taken. Other records are not the guards'.
pub fn apply_guard(record: &Record, guards: &Guards) {
    match record {
        Record::GuardBlock {
            guard,
            scope,
            name,
            at_ms,
            reason,
        } => {
            guards.restore(Block {
                guard: *guard,
                scope: *scope,
                name: Arc::from(name.as_str()),
                at: UnixMs(*at_ms),
                reason: reason.clone(),
            });
        }
        Record::GuardClear { scope, name, .. } => {
            guards.clear(*scope, name);
        }
        _ => {}
    }
}

fn is_clamp(tight: &Tight) -> bool {
    *tight == Tight::Clamp
}

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state folder or a file in it could not be read, written or synced.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the file system said.
        source: io::Error,
    },
    /// A line is not a record, or names what does not exist.
    #[error("{}:{line}: {reason}", path.display())]
    Corrupt {
        /// The journal's path.
        path: PathBuf,
        /// The record's line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// The open journal and audit log.
pub struct Journal {
    journal_path: PathBuf,
    files: Mutex<(File, File)>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("journal_path", &self.journal_path)
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Journal {
    /// Opens (creating) the journal in `dir` and replays it into `directory`, `keys` and
    /// `guards` (the blocks in force). Returns the journal
    /// and the number of keys restored.
    pub fn open(
        dir: &Path,
        directory: &Directory,
        keys: &KeyStore,
        guards: &Guards,
        operators: &OperatorStore,
    ) -> Result<(Journal, usize), StateError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let journal_path = dir.join(JOURNAL_FILE);
        let audit_path = dir.join(AUDIT_FILE);
        let restored = replay(&journal_path, directory, keys, guards, operators)?;
        let open = |path: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io_error(path))
        };
        let files = (open(&journal_path)?, open(&audit_path)?);
        Ok((
            Journal {
                journal_path,
                files: Mutex::new(files),
            },
            restored,
        ))
    }

    /// Appends an audit line alone (an action with nothing to replay), synced.
    pub fn audit(&self, audit: &serde_json::Value) -> Result<(), StateError> {
        let mut line = audit.to_string().into_bytes();
        line.push(b'\n');
        let mut files = self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let audit_file = &mut files.1;
        audit_file
            .write_all(&line)
            .and_then(|()| audit_file.sync_data())
            .map_err(io_error(&self.journal_path))
    }

    /// Appends `record` and an audit line, syncing both before returning.
    pub fn append(&self, record: &Record, audit: &serde_json::Value) -> Result<(), StateError> {
        let mut line = serde_json::to_vec(record).map_err(|e| StateError::Io {
            path: self.journal_path.clone(),
            source: io::Error::other(e),
        })?;
        line.push(b'\n');
        let mut audit_line = audit.to_string().into_bytes();
        audit_line.push(b'\n');
        let mut files = self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (keys, audit_file) = &mut *files;
        keys.write_all(&line)
            .and_then(|()| keys.sync_data())
            .map_err(io_error(&self.journal_path))?;
        audit_file
            .write_all(&audit_line)
            .and_then(|()| audit_file.sync_data())
            .map_err(io_error(&self.journal_path))?;
        Ok(())
    }
}

/// Puts an operator record back (at replay, and from the control topic); other records are
/// not the operators'.
pub fn apply_operator(record: &Record, operators: &OperatorStore) -> Result<(), String> {
    match record {
        Record::CreateOperator {
            id: _,
            hash,
            name,
            role,
            team,
            created_at_ms,
        } => {
            let hash = KeyHash::from_hex(hash).ok_or_else(|| "bad operator hash".to_owned())?;
            let spec = tollgate_engine::operator::OperatorSpec {
                name: name.clone(),
                role: *role,
                team: team.clone(),
                created_at: UnixMs(*created_at_ms),
            };
            operators
                .restore(hash, spec, false)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        Record::RevokeOperator { id, .. } => {
            // One never seen (compacted away, or revoked before it reached here) is nothing
            // to do.
            let _ = operators.revoke(*id);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The record that creates `key`.
#[must_use]
pub fn create_record(key: &VirtualKey, spec: &KeySpec) -> Record {
    Record::Create {
        id: key.id(),
        hash: key.hash().to_hex(),
        prefix: key.display_prefix(),
        allocation: key.allocation.name.to_string(),
        user: spec.user.clone(),
        agent: spec.agent.clone(),
        expires_at_ms: spec.expires_at.map(|t| t.0),
        models: match spec.models {
            AllowList::Any => Vec::new(),
            AllowList::Only(_) => spec.models.entries(),
        },
        requests_per_minute: spec.limits.requests_per_minute,
        tokens_per_minute: spec.limits.tokens_per_minute,
        scopes: spec.scopes.names().into_iter().map(str::to_owned).collect(),
        tight: spec.tight,
        created_at_ms: spec.created_at.0,
    }
}

fn replay(
    path: &Path,
    directory: &Directory,
    keys: &KeyStore,
    guards: &Guards,
    operators: &OperatorStore,
) -> Result<usize, StateError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error(path)(e)),
    };
    let corrupt = |line: usize, reason: String| StateError::Corrupt {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut creates = Vec::new();
    let mut revoked = HashSet::new();
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        number += 1;
        if buf.last() != Some(&b'\n') {
            // Cut by a crash mid-write: never acknowledged, so never in force.
            crate::operator::report(&format!(
                "{}:{number}: ignoring an incomplete last record",
                path.display()
            ));
            break;
        }
        let record: Record =
            serde_json::from_slice(&buf).map_err(|e| corrupt(number, e.to_string()))?;
        match record {
            Record::Create { .. } => creates.push((number, record)),
            Record::Revoke { id, .. } => {
                revoked.insert(id);
            }
            // Allocations and limits apply in order, so keys (restored last) find them.
            Record::CreateAllocation { .. } | Record::SetLimit { .. } => {
                apply(&record, directory).map_err(|e| corrupt(number, e.to_string()))?;
            }
            // Blocks and clears apply in order: the last word on each scope and name holds.
            Record::GuardBlock { .. } | Record::GuardClear { .. } => apply_guard(&record, guards),
            Record::CreateOperator { .. } | Record::RevokeOperator { .. } => {
                apply_operator(&record, operators).map_err(|e| corrupt(number, e))?;
            }
        }
    }
    let mut restored = Vec::with_capacity(creates.len());
    for (line, record) in creates {
        if let Some(key) =
            restored_key(record, directory, &revoked).map_err(|e| corrupt(line, e))?
        {
            restored.push(key);
        }
    }
    keys.restore_many(restored)
        .map_err(|e| corrupt(number, e.to_string()))
}

/// A key as `keys.restore_many` takes it: its allocation, hash, shown prefix and spec.
pub(crate) type RestoredKey = (Arc<Allocation>, KeyHash, String, KeySpec);

/// The key a `Create` record made, revoked if a later record revoked it (`None` for any other
/// record); why the record cannot be read, if it cannot.
pub(crate) fn restored_key(
    record: Record,
    directory: &Directory,
    revoked: &HashSet<KeyId>,
) -> Result<Option<RestoredKey>, String> {
    let Record::Create {
        id,
        hash,
        prefix,
        allocation,
        user,
        agent,
        expires_at_ms,
        models,
        requests_per_minute,
        tokens_per_minute,
        scopes,
        tight,
        created_at_ms,
    } = record
    else {
        return Ok(None);
    };
    let allocation = directory
        .allocation(&allocation)
        .map_err(|e| e.to_string())?;
    let hash = KeyHash::from_hex(&hash).ok_or_else(|| "bad key hash".to_owned())?;
    if hash.id() != id {
        return Err(format!("id {id} does not match the key hash"));
    }
    let models = crate::config::allow_list(&models).map_err(|e| e.to_string())?;
    let scopes = Scopes::parse(&scopes).map_err(|e| e.to_string())?;
    let spec = KeySpec {
        user,
        agent,
        expires_at: expires_at_ms.map(UnixMs),
        models,
        limits: KeyLimits {
            requests_per_minute,
            tokens_per_minute,
        },
        scopes,
        created_at: UnixMs(created_at_ms),
        revoked: revoked.contains(&id),
        tight,
    };
    Ok(Some((allocation, hash, prefix, spec)))
}

/// Applies an allocation or budget record to the directory (at replay, and when the admin API
/// makes the change). Key records are the key store's.
pub fn apply(record: &Record, directory: &Directory) -> Result<(), tollgate_engine::Error> {
    match record {
        Record::CreateAllocation {
            name,
            project,
            cost_center,
            models,
            budget,
            tight,
        } => {
            directory.add_allocation(AllocationSpec {
                name: name.clone(),
                project: project.clone(),
                cost_center: cost_center.clone(),
                models: crate::config::allow_list(models)?,
                budget: *budget,
                tight: *tight,
            })?;
        }
        Record::SetLimit { level, name, limit } => {
            let cell = match level {
                Level::Allocation => {
                    let allocation = directory.allocation(name)?;
                    allocation.budget.set_limit(*limit);
                    return Ok(());
                }
                Level::Project => directory.project(name)?.budget.clone(),
                Level::Team => directory.team(name)?.budget.clone(),
            };
            cell.set_limit(*limit);
        }
        Record::Create { .. }
        | Record::Revoke { .. }
        | Record::GuardBlock { .. }
        | Record::GuardClear { .. }
        | Record::CreateOperator { .. }
        | Record::RevokeOperator { .. } => {}
    }
    Ok(())
}
