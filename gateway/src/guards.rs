//! Spend guardrails on the request path: the runaway-loop detector and the spend-velocity
//! ceilings of `[guards]`, and the blocks they place until an operator clears them.
//!
//! A call is known to the loop detector by a keyed hash (SipHash with a key drawn at start) of
//! its model and its last messages, tool results among them, and by a hash of the last answer
//! it carries back; never by its text. Each key has a window of its last calls
//! ([`tollgate_engine::guard::LoopWindow`]); each key, agent and allocation with a ceiling has
//! a minute of spend ([`tollgate_engine::guard::SpendWindow`]), charged as calls settle. Each
//! sits behind a lock of its own, held for a few dozen nanoseconds, so one agent's calls never
//! wait on another's. A gateway without `[guards]` pays one branch per call.
//!
//! **Invariant:** spend settled in any minute by a scope with a ceiling is at most the ceiling
//! plus what calls admitted under it were still holding: a call is refused once the last
//! minute's spend has reached the ceiling.
//!
//! A block placed here is handed to the control plane ([`Guards::placed`]), which journals it
//! and, with a control topic, shares it: a restart and every replica keep it until an
//! operator clears it.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hasher as _, RandomState};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use dashmap::DashMap;
use serde_json::{Value, json};
use tollgate_engine::guard::{Action, CallPrint, Guard, LoopWindow, SpendWindow};
use tollgate_engine::time::format_rfc3339_s;
use tollgate_engine::{KeyId, Nanos, UnixMs, VirtualKey};

use crate::config::{GuardsConfig, LoopConfig, Scope};
use crate::events::emit::Emitter;
use crate::json_scan;
use crate::limits::{GUARD_ALERT_INTERVAL_MS, GUARD_BLOCKS_QUEUED_MAX, GUARD_MESSAGES_MAX};

/// A guard refused a call: what tripped, where, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tripped {
    /// The loop detector or a velocity ceiling.
    pub guard: Guard,
    /// The key, agent or allocation refused.
    pub scope: Scope,
    /// Its key id, agent name or allocation name.
    pub name: Arc<str>,
    /// Seconds until a call would be let through; `None` when blocked until cleared.
    pub retry_after_s: Option<u64>,
}

/// A block a guard placed: every call of `scope` `name` is refused until an operator clears it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The guard that placed it.
    pub guard: Guard,
    /// The key, agent or allocation blocked.
    pub scope: Scope,
    /// Its key id, agent name or allocation name.
    pub name: Arc<str>,
    /// When it was placed.
    pub at: UnixMs,
    /// What tripped, in words (no prompt text).
    pub reason: String,
}

/// What a key's calls left in its loop window, and when a loop of it was last told.
struct Watched<W> {
    window: W,
    alerted_at_ms: Option<i64>,
}

impl<W> Watched<W> {
    fn new(window: W) -> Watched<W> {
        Watched {
            window,
            alerted_at_ms: None,
        }
    }

    /// Whether an alert is due now, marking it told.
    fn alert_due(&mut self, now_ms: i64) -> bool {
        let due = self
            .alerted_at_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= GUARD_ALERT_INTERVAL_MS);
        if due {
            self.alerted_at_ms = Some(now_ms);
        }
        due
    }
}

type Shared<W> = Arc<Mutex<Watched<W>>>;

/// The ceilings of one scope: the named ones, and the one for every other name.
#[derive(Default)]
struct Ceilings {
    named: HashMap<String, (Nanos, Action)>,
    /// The key scope's named ceilings by key id, so a call finds its key's without making
    /// the id's text.
    keys: HashMap<KeyId, (Nanos, Action)>,
    others: Option<(Nanos, Action)>,
}

impl Ceilings {
    fn of(&self, name: &str) -> Option<(Nanos, Action)> {
        self.named.get(name).copied().or(self.others)
    }

    fn of_key(&self, id: KeyId) -> Option<(Nanos, Action)> {
        self.keys.get(&id).copied().or(self.others)
    }

    fn is_empty(&self) -> bool {
        self.named.is_empty() && self.keys.is_empty() && self.others.is_none()
    }
}

/// What a spend window is of: a key by its id, an agent or an allocation by its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Subject {
    Key(KeyId),
    Named(Arc<str>),
}

impl Subject {
    /// The name it goes by in alerts and refusals (a key's id made into text only here).
    fn name(&self) -> Arc<str> {
        match self {
            Subject::Key(id) => Arc::from(id.to_string()),
            Subject::Named(name) => Arc::clone(name),
        }
    }
}

/// The guards' state: loop windows per key, spend windows per scope, and the blocks in force.
pub struct Guards {
    loops: Option<LoopConfig>,
    hasher: RandomState,
    ceilings: [Ceilings; 3],
    windows: DashMap<KeyId, Shared<LoopWindow>>,
    spend: [DashMap<Subject, Shared<SpendWindow>>; 3],
    blocks: Mutex<Vec<Block>>,
    /// `blocks.len()`, read without the lock on every call.
    blocked: AtomicUsize,
    /// Blocks placed on the request path, for the control plane to journal and share
    /// ([`Guards::placed`]); bounded, never waited on.
    placed: tokio::sync::mpsc::Sender<Block>,
    placed_rx: Mutex<Option<tokio::sync::mpsc::Receiver<Block>>>,
}

impl std::fmt::Debug for Guards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guards")
            .field("loops", &self.loops)
            .field("blocked", &self.blocked)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn index(scope: Scope) -> usize {
    match scope {
        Scope::Key => 0,
        Scope::Agent => 1,
        Scope::Allocation => 2,
    }
}

/// The name `key`'s calls go by in `scope`: its id, its agent (if it names one), its
/// allocation.
fn name_in(key: &VirtualKey, scope: Scope) -> Option<Arc<str>> {
    match scope {
        Scope::Key => Some(Arc::from(key.id().to_string())),
        Scope::Agent => key.agent.clone(),
        Scope::Allocation => Some(Arc::clone(&key.allocation.name)),
    }
}

fn seconds(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0).div_ceil(1_000).max(1)
}

impl Guards {
    /// The guards `config` sets (none: every call passes at the cost of one branch).
    #[must_use]
    pub fn new(config: &GuardsConfig) -> Guards {
        let mut ceilings: [Ceilings; 3] = Default::default();
        for velocity in &config.velocity {
            let of = &mut ceilings[index(velocity.scope)];
            let ceiling = (velocity.per_minute, velocity.action);
            match &velocity.name {
                Some(name) => match (velocity.scope, KeyId::parse(name)) {
                    (Scope::Key, Ok(id)) => {
                        of.keys.insert(id, ceiling);
                    }
                    _ => {
                        of.named.insert(name.clone(), ceiling);
                    }
                },
                None => of.others = Some(ceiling),
            }
        }
        let (placed, placed_rx) = tokio::sync::mpsc::channel(GUARD_BLOCKS_QUEUED_MAX);
        Guards {
            loops: config.loops,
            hasher: RandomState::new(),
            ceilings,
            windows: DashMap::new(),
            spend: Default::default(),
            blocks: Mutex::new(Vec::new()),
            blocked: AtomicUsize::new(0),
            placed,
            placed_rx: Mutex::new(Some(placed_rx)),
        }
    }

    /// The blocks the request path places from now on, for the control plane to make durable
    /// and share: `None` once taken (one taker per process).
    pub fn placed(&self) -> Option<tokio::sync::mpsc::Receiver<Block>> {
        lock(&self.placed_rx).take()
    }

    /// Puts back a block journaled or shared before (at replay, from the control topic):
    /// nothing if `scope` `name` is blocked already. Whether it was placed.
    pub fn restore(&self, block: Block) -> bool {
        self.place(block)
    }

    /// Whether no guard is configured and nothing is blocked.
    #[must_use]
    pub fn is_off(&self) -> bool {
        self.loops.is_none()
            && self.ceilings.iter().all(Ceilings::is_empty)
            && self.blocked.load(Ordering::Relaxed) == 0
    }

    /// Whether the loop detector is on (calls are fingerprinted only then).
    #[must_use]
    pub fn watches_loops(&self) -> bool {
        self.loops.is_some()
    }

    /// What the loop detector knows `body`'s call by, asked of `model`: a keyed hash of the
    /// model and the last `[guards.loop] messages` of its `messages` (or `input`, or `prompt`),
    /// a hash of the latest assistant message among the last few, and the context's size.
    /// `None` for a body with none of those (an embedding's input is not a conversation).
    #[must_use]
    pub fn print(&self, model: &str, body: &[u8], context: Range<usize>) -> Option<CallPrint> {
        let messages = self.loops?.messages;
        let json = std::str::from_utf8(body).ok()?;
        json.get(context.clone())?;
        let mut fingerprint = self.hasher.build_hasher();
        fingerprint.write(model.as_bytes());
        fingerprint.write_u8(0xff);
        // The last few elements' spans, in a ring: enough for the fingerprint and the answer.
        let mut last: [std::ops::Range<usize>; GUARD_MESSAGES_MAX] = Default::default();
        let mut count = 0usize;
        for element in json_scan::elements(json, &context) {
            last[count % GUARD_MESSAGES_MAX] = element;
            count += 1;
        }
        if count == 0 {
            // A string prompt (or an empty conversation) is known by all of it.
            fingerprint.write(&body[context.clone()]);
        }
        let kept = count.min(GUARD_MESSAGES_MAX);
        let span = |back: usize| &last[(count - 1 - back) % GUARD_MESSAGES_MAX];
        for back in (0..kept.min(messages)).rev() {
            fingerprint.write(&body[span(back).clone()]);
            fingerprint.write_u8(0xfe);
        }
        let answer = (0..kept).map(span).find(|element| {
            json_scan::members(json, element, ["role"])
                .and_then(|m| m.members[0].clone())
                .and_then(|role| json_scan::str_at(json, &role.value))
                .is_some_and(|role| role == "assistant")
        });
        let answer = answer.map(|element| {
            let mut hash = self.hasher.build_hasher();
            hash.write(&body[element.clone()]);
            hash.finish()
        });
        Some(CallPrint {
            fingerprint: fingerprint.finish(),
            answer,
            context_bytes: u64::try_from(context.len()).unwrap_or(u64::MAX),
        })
    }

    /// [`Guards::print`] of `body` with its conversation found by a scan of its own: for
    /// callers without the request path's (tests, benches, fuzzing).
    #[must_use]
    pub fn print_body(&self, model: &str, body: &[u8]) -> Option<CallPrint> {
        let scanned = json_scan::scan(body, ["messages", "input", "prompt"]).ok()?;
        let context = scanned.members.into_iter().flatten().next()?.value;
        self.print(model, body, context)
    }

    /// Judges a call of `key` (known by `print`, when loops are watched) at `now`: refused if
    /// it, its agent or its allocation is blocked, if it is part of a loop, or if a ceiling's
    /// minute is spent, as each guard's action says; alerts go to `emitter`.
    pub fn admit(
        &self,
        key: &VirtualKey,
        print: Option<CallPrint>,
        now: UnixMs,
        emitter: &Emitter,
    ) -> Result<(), Tripped> {
        if self.blocked.load(Ordering::Relaxed) > 0 {
            self.check_blocks(key)?;
        }
        if let (Some(loops), Some(print)) = (&self.loops, print) {
            self.judge_loop(key, loops, print, now, emitter)?;
        }
        for (scope, subject, ceiling, action) in self.ceilings_of(key) {
            let watched = self.spend_of(scope, &subject);
            let mut watched = lock(&watched);
            let Err(speeding) = watched.window.judge(ceiling, now.0) else {
                continue;
            };
            let reason = format!(
                "spent {} in the last minute, at or past its ceiling of {} a minute",
                speeding.spent, ceiling
            );
            let tripped = Tripped {
                guard: Guard::SpendVelocityExceeded,
                scope,
                name: subject.name(),
                retry_after_s: Some(seconds(speeding.retry_after_ms)),
            };
            let alert = watched.alert_due(now.0);
            drop(watched);
            self.act(action, tripped, reason, now, alert, emitter)?;
        }
        Ok(())
    }

    fn judge_loop(
        &self,
        key: &VirtualKey,
        loops: &LoopConfig,
        print: CallPrint,
        now: UnixMs,
        emitter: &Emitter,
    ) -> Result<(), Tripped> {
        let watched = self
            .windows
            .entry(key.id())
            .or_insert_with(|| Arc::new(Mutex::new(Watched::new(LoopWindow::new()))))
            .clone();
        let mut watched = lock(&watched);
        let Some(looping) = watched.window.judge(&loops.rule, print, now.0) else {
            watched.window.record(&loops.rule, print, now.0);
            return Ok(());
        };
        if loops.action == Action::Alert {
            watched.window.record(&loops.rule, print, now.0);
        }
        let alert = watched.alert_due(now.0);
        drop(watched);
        let reason = match looping {
            tollgate_engine::guard::Looping::Repeated { calls, .. } => format!(
                "the same call {calls} times within {} ms",
                loops.rule.window_ms
            ),
            tollgate_engine::guard::Looping::Growing { calls, .. } => format!(
                "{calls} calls in a row carrying back the same answer with more context each time"
            ),
        };
        let tripped = Tripped {
            guard: Guard::LoopDetected,
            scope: Scope::Key,
            name: Arc::from(key.id().to_string()),
            retry_after_s: Some(seconds(looping.retry_after_ms())),
        };
        self.act(loops.action, tripped, reason, now, alert, emitter)
    }

    /// Does what `action` says with a guard that tripped: tells it (when `alert` is due, or a
    /// block is new), and refuses the call unless the action is `alert`.
    fn act(
        &self,
        action: Action,
        mut tripped: Tripped,
        reason: String,
        now: UnixMs,
        alert: bool,
        emitter: &Emitter,
    ) -> Result<(), Tripped> {
        match action {
            Action::Alert => {
                if alert {
                    emitter.raise(alert_line(&tripped, action, &reason, now), now);
                }
                Ok(())
            }
            Action::Throttle => {
                if alert {
                    emitter.raise(alert_line(&tripped, action, &reason, now), now);
                }
                Err(tripped)
            }
            Action::Block => {
                tripped.retry_after_s = None;
                let placed = self.place(Block {
                    guard: tripped.guard,
                    scope: tripped.scope,
                    name: Arc::clone(&tripped.name),
                    at: now,
                    reason: reason.clone(),
                });
                if placed {
                    emitter.raise(alert_line(&tripped, action, &reason, now), now);
                    let block = Block {
                        guard: tripped.guard,
                        scope: tripped.scope,
                        name: Arc::clone(&tripped.name),
                        at: now,
                        reason: reason.clone(),
                    };
                    if self.placed.try_send(block).is_err() {
                        crate::operator::report(&format!(
                            "guards: the block on {} `{}` holds here but is not journaled: {GUARD_BLOCKS_QUEUED_MAX} blocks wait already",
                            tripped.scope.as_str(),
                            tripped.name
                        ));
                    }
                }
                Err(tripped)
            }
        }
    }

    /// Places `block`, unless its scope and name are blocked already. Whether it was new.
    fn place(&self, block: Block) -> bool {
        let mut blocks = lock(&self.blocks);
        if blocks
            .iter()
            .any(|b| b.scope == block.scope && b.name == block.name)
        {
            return false;
        }
        blocks.push(block);
        self.blocked.store(blocks.len(), Ordering::Relaxed);
        true
    }

    fn check_blocks(&self, key: &VirtualKey) -> Result<(), Tripped> {
        let blocks = lock(&self.blocks);
        for block in blocks.iter() {
            if name_in(key, block.scope).is_some_and(|name| name == block.name) {
                return Err(Tripped {
                    guard: block.guard,
                    scope: block.scope,
                    name: Arc::clone(&block.name),
                    retry_after_s: None,
                });
            }
        }
        Ok(())
    }

    /// The ceilings `key`'s calls are under: its own, its agent's, its allocation's, each with
    /// the name it goes by there.
    fn ceilings_of<'g>(
        &'g self,
        key: &'g VirtualKey,
    ) -> impl Iterator<Item = (Scope, Subject, Nanos, Action)> + 'g {
        Scope::ALL.into_iter().filter_map(move |scope| {
            let ceilings = &self.ceilings[index(scope)];
            if ceilings.is_empty() {
                return None;
            }
            let (subject, (ceiling, action)) = match scope {
                Scope::Key => (Subject::Key(key.id()), ceilings.of_key(key.id())?),
                Scope::Agent => {
                    let agent = key.agent.as_ref()?;
                    (Subject::Named(Arc::clone(agent)), ceilings.of(agent)?)
                }
                Scope::Allocation => {
                    let name = &key.allocation.name;
                    (Subject::Named(Arc::clone(name)), ceilings.of(name)?)
                }
            };
            Some((scope, subject, ceiling, action))
        })
    }

    fn spend_of(&self, scope: Scope, subject: &Subject) -> Shared<SpendWindow> {
        self.spend[index(scope)]
            .entry(subject.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Watched::new(SpendWindow::new()))))
            .clone()
    }

    /// Charges a settled call's `cost` to the spend windows of `key`, its agent and its
    /// allocation that have a ceiling, at the time it settles (the clock is read only when
    /// there is a ceiling to charge).
    pub fn charge(&self, key: &VirtualKey, cost: Nanos) {
        if cost == Nanos(0) || self.ceilings.iter().all(Ceilings::is_empty) {
            return;
        }
        let now = crate::clock::now_ms();
        for (scope, subject, _, _) in self.ceilings_of(key) {
            lock(&self.spend_of(scope, &subject))
                .window
                .add(now.0, cost);
        }
    }

    /// The blocks in force, oldest first.
    #[must_use]
    pub fn blocks(&self) -> Vec<Block> {
        lock(&self.blocks).clone()
    }

    /// Clears the block on `scope` `name`, and what its guard remembers of it (a loop's
    /// window, a ceiling's minute), so its next call starts afresh. The block cleared, if any.
    pub fn clear(&self, scope: Scope, name: &str) -> Option<Block> {
        let mut blocks = lock(&self.blocks);
        let at = blocks
            .iter()
            .position(|b| b.scope == scope && &*b.name == name)?;
        let block = blocks.remove(at);
        self.blocked.store(blocks.len(), Ordering::Relaxed);
        drop(blocks);
        match (block.guard, scope) {
            (Guard::LoopDetected, Scope::Key) => {
                if let Ok(id) = KeyId::parse(name) {
                    self.windows.remove(&id);
                }
            }
            _ => {
                let subject = match (scope, KeyId::parse(name)) {
                    (Scope::Key, Ok(id)) => Subject::Key(id),
                    _ => Subject::Named(Arc::from(name)),
                };
                self.spend[index(scope)].remove(&subject);
            }
        }
        Some(block)
    }

    /// Forgets a revoked key's loop window.
    pub fn forget_key(&self, id: KeyId) {
        self.windows.remove(&id);
    }
}

/// The alert line of a guard that tripped.
fn alert_line(tripped: &Tripped, action: Action, reason: &str, now: UnixMs) -> Value {
    let then = match action {
        Action::Alert => "its calls go on".to_owned(),
        Action::Throttle => format!(
            "its calls are refused for {} s",
            tripped.retry_after_s.unwrap_or(1)
        ),
        Action::Block => "its calls are refused until an operator clears the block".to_owned(),
    };
    json!({
        "kind": tripped.guard.as_str(),
        "at": format_rfc3339_s(now),
        "scope": tripped.scope.as_str(),
        "name": &*tripped.name,
        "action": action.as_str(),
        "reason": reason,
        "message": format!("{} `{}`: {reason}; {then}", tripped.scope.as_str(), tripped.name),
    })
}

#[cfg(test)]
mod tests {
    use tollgate_engine::guard::LoopRule;

    use super::*;

    fn guards(messages: usize) -> Guards {
        Guards::new(&GuardsConfig {
            loops: Some(LoopConfig {
                rule: LoopRule {
                    repeats: 3,
                    window_ms: 60_000,
                    growing_calls: 4,
                },
                messages,
                action: Action::Throttle,
            }),
            velocity: Vec::new(),
        })
    }

    fn chat(history: &[(&str, &str)]) -> Vec<u8> {
        let messages: Vec<Value> = history
            .iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect();
        json!({"model": "openai/gpt-4o", "messages": messages})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn a_call_is_known_by_its_model_and_last_messages_and_the_answer_it_carries_back() {
        let guards = guards(2);
        let print = |body: &[u8]| guards.print_body("openai/gpt-4o", body).unwrap();
        let a = print(&chat(&[
            ("user", "fix it"),
            ("assistant", "ls"),
            ("tool", "a.rs"),
        ]));
        // A longer history ending the same way is the same call, with more context.
        let b = print(&chat(&[
            ("user", "fix it"),
            ("assistant", "cat"),
            ("assistant", "ls"),
            ("tool", "a.rs"),
        ]));
        assert_eq!(a.fingerprint, b.fingerprint);
        assert!(b.context_bytes > a.context_bytes);
        assert_eq!(a.answer, b.answer);
        assert!(a.answer.is_some());
        // Another tool result, another answer, another model: another call.
        let c = print(&chat(&[
            ("user", "fix it"),
            ("assistant", "ls"),
            ("tool", "b.rs"),
        ]));
        assert_ne!(a.fingerprint, c.fingerprint);
        assert_eq!(a.answer, c.answer);
        let d = print(&chat(&[
            ("user", "fix it"),
            ("assistant", "pwd"),
            ("tool", "a.rs"),
        ]));
        assert_ne!(a.fingerprint, d.fingerprint);
        assert_ne!(a.answer, d.answer);
        let body = chat(&[("user", "fix it"), ("assistant", "ls"), ("tool", "a.rs")]);
        let other = guards.print_body("openai/gpt-4o-mini", &body).unwrap();
        assert_ne!(a.fingerprint, other.fingerprint);
        // A first message has no answer to carry back.
        assert_eq!(print(&chat(&[("user", "hello")])).answer, None);
    }

    #[test]
    fn more_messages_tell_more_calls_apart_and_prompts_and_bad_bodies_are_handled() {
        let one = guards(1);
        let three = guards(3);
        let x = chat(&[("user", "a"), ("assistant", "b"), ("tool", "same")]);
        let y = chat(&[("user", "z"), ("assistant", "q"), ("tool", "same")]);
        let print = |g: &Guards, body: &[u8]| g.print_body("m/m", body).unwrap().fingerprint;
        assert_eq!(print(&one, &x), print(&one, &y));
        assert_ne!(print(&three, &x), print(&three, &y));
        // A string prompt is known by all of it.
        let p = |text: &str| json!({"model": "m", "prompt": text}).to_string();
        assert_eq!(
            print(&one, p("hi").as_bytes()),
            print(&one, p("hi").as_bytes())
        );
        assert_ne!(
            print(&one, p("hi").as_bytes()),
            print(&one, p("ho").as_bytes())
        );
        // Nothing to know a call by, or a body that is no object: no print, no panic.
        for body in [
            &b"{\"model\": \"m\"}"[..],
            b"[1,2]",
            b"\xff\xfe",
            b"{\"messages\": [1,",
        ] {
            assert_eq!(one.print_body("m/m", body), None, "{body:?}");
        }
        // Without `[guards.loop]`, calls are not fingerprinted at all.
        assert_eq!(
            Guards::new(&GuardsConfig::default()).print_body("m/m", &x),
            None
        );
        assert!(Guards::new(&GuardsConfig::default()).is_off());
    }

    #[test]
    fn a_ceiling_named_for_one_key_holds_it_alone_and_names_it() {
        use tollgate_engine::identity::test_directory;
        use tollgate_engine::{
            AllowList, BudgetSpec, KeyLimits, KeySpec, KeyStore, Period, Scopes,
        };
        let (_directory, allocation) = test_directory(
            BudgetSpec::unlimited(Period::Month),
            BudgetSpec::unlimited(Period::Month),
            BudgetSpec::unlimited(Period::Month),
        )
        .unwrap();
        let store = KeyStore::new();
        let spec = || KeySpec {
            user: "ada".into(),
            agent: None,
            expires_at: None,
            models: AllowList::Any,
            limits: KeyLimits::default(),
            scopes: Scopes::NONE,
            created_at: UnixMs(0),
            revoked: false,
            tight: None,
        };
        let (watched, _) = store.create(&allocation, spec(), &[1; 20]).unwrap();
        let (free, _) = store.create(&allocation, spec(), &[2; 20]).unwrap();
        let guards = Guards::new(&GuardsConfig {
            loops: None,
            velocity: vec![crate::config::VelocityConfig {
                scope: Scope::Key,
                name: Some(watched.id().to_string()),
                per_minute: Nanos(1_000),
                action: Action::Throttle,
            }],
        });
        let dir = std::env::temp_dir().join(format!("tollgate-guards-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let events = crate::config::EventsConfig {
            dir: dir.clone(),
            queued_max: 4,
            sync_interval: std::time::Duration::from_millis(10),
            checkpoint_interval: std::time::Duration::from_secs(60),
            segment_bytes_max: 1 << 20,
            log_bytes_max: 1 << 30,
        };
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let (emitter, writer, _) = Emitter::start(&events, None, metrics).unwrap();
        let now = crate::clock::now_ms();
        for key in [&watched, &free] {
            assert!(guards.admit(key, None, now, &emitter).is_ok());
            guards.charge(key, Nanos(1_000));
        }
        let tripped = guards.admit(&watched, None, now, &emitter).unwrap_err();
        assert_eq!(
            (tripped.guard, tripped.scope, &*tripped.name),
            (
                Guard::SpendVelocityExceeded,
                Scope::Key,
                watched.id().to_string().as_str()
            )
        );
        assert!(guards.admit(&free, None, now, &emitter).is_ok());
        writer.stop().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
