//! Every bound the gateway enforces, with its default, in one place (TIGER_STYLE).
//!
//! Each of these is a default for a field of `[server]` or `[provider]` in the config; the
//! config documents them again for operators. A limit that fills shows on `/metrics`.

use std::time::Duration;

/// Largest request body read (`server.body_bytes_max`). Agents send 400 KB; a 1M-token context
/// is about 4 MB of text, images included in base64 can be more.
pub const BODY_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Largest request head (`server.header_bytes_max`).
pub const HEADER_BYTES_MAX: usize = 64 * 1024;

/// Time allowed for a client to send its request head (`server.header_timeout_ms`).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the kernel keeps waiting to be accepted (capped by `net.core.somaxconn`). A
/// short queue drops the handshakes of a burst of new connections, and each dropped client
/// waits a retransmission (a second or more) before it is let in.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Time allowed for a client to send its whole body (`server.body_timeout_ms`).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Requests in flight at once (`server.requests_in_flight_max`); past it, 503.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 16_384;

/// Connecting to an upstream (`provider.connect_timeout_ms`).
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// From sending the request to the upstream's response head (`provider.first_byte_timeout_ms`).
/// Reasoning models think before they answer, so this is long.
pub const UPSTREAM_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(600);

/// Longest silence between two pieces of an upstream body (`provider.idle_timeout_ms`).
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Idle pooled connections kept per upstream host.
pub const UPSTREAM_IDLE_CONNECTIONS_MAX: usize = 256;

/// How long a pooled upstream connection may sit idle before it is dropped rather than reused:
/// under the 5 s after which llama.cpp's server, uvicorn (vLLM) and Node close an idle
/// keep-alive connection, so a call is never sent on a connection the server is closing
/// (which fails as "connection closed before message completed", a 502 to the client).
pub const UPSTREAM_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// A non-streaming upstream answer is kept (as shared slices, no copy) to read its usage; past
/// this size it is still forwarded, and its usage is counted instead.
pub const RESPONSE_METER_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Streamed text kept per stream to count tokens when the provider reports no usage; text past
/// it is counted by extrapolation from what was kept (and flagged estimated).
pub const STREAM_TEXT_BYTES_MAX: usize = 16 * 1024;

/// One server-sent event line kept while it is incomplete.
pub const SSE_LINE_BYTES_MAX: usize = 1024 * 1024;

/// Nesting accepted in a request body.
pub const JSON_DEPTH_MAX: usize = 128;

/// Appended usage events waiting for their sync (`events.queued_max`); past it new requests
/// get 503 until the disk catches up.
pub const EVENTS_QUEUED_MAX: usize = 65_536;
/// Usage events kept in memory while the log cannot be written (a full or failing disk),
/// appended by the syncer once it can. New calls are refused meanwhile, so only calls already
/// in flight add to it; past this many an event is lost (counted and reported).
pub const EVENTS_HELD_BACK_MAX: usize = 65_536;

/// Longest an event waits in the writer before it is synced (`events.sync_interval_ms`).
pub const EVENTS_SYNC_INTERVAL: Duration = Duration::from_millis(10);

/// How often the spend checkpoint is written and consumed log segments removed
/// (`events.checkpoint_interval_ms`).
pub const EVENTS_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// Size at which a log segment is sealed and the next begun (`events.segment_bytes_max`).
pub const EVENTS_SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The event log's cap on disk (`events.log_bytes_max`): past it new requests get 503 until a
/// reader catches up and segments can go; a warning at 80 %.
pub const EVENTS_LOG_BYTES_MAX: u64 = 16 * 1024 * 1024 * 1024;

/// How long graceful shutdown waits for in-flight streams (`server.drain_timeout_ms`).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest admin request body.
pub const ADMIN_BODY_BYTES_MAX: usize = 64 * 1024;

/// Most threads serving requests (`server.worker_threads`): past the cores a machine has,
/// more threads only take turns.
pub const WORKER_THREADS_MAX: usize = 1024;

/// Threads for blocking work (counting tokens of calls the provider reported no usage for).
pub const BLOCKING_THREADS_MAX: usize = 8;

/// How often the synced event log is written out as Parquet (`parquet.roll_interval_ms`).
pub const PARQUET_ROLL_INTERVAL: Duration = Duration::from_secs(60);

/// Most events in one Parquet file (`parquet.rows_max`).
pub const PARQUET_ROWS_MAX: usize = 1_000_000;

/// Most bytes of events (as logged, before columnar compression) in one Parquet file
/// (`parquet.bytes_max`).
pub const PARQUET_BYTES_MAX: usize = 256 * 1024 * 1024;

/// How long a usage event may wait for the broker's acknowledgement before its delivery is
/// reported failed and retried later (`kafka.delivery_timeout_ms`).
pub const KAFKA_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often other replicas' spend, read from the usage topic, is applied to the budget table
/// (`kafka.reconcile_interval_ms`).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);

/// Longest a starting gateway waits to have read other replicas' spend from the topic before it
/// admits requests anyway (a broker away at start must not keep the gateway down).
pub const RECONCILE_CATCH_UP_MAX: Duration = Duration::from_secs(30);

/// Longest a starting gateway waits to have read the control topic to its end. Unlike spend,
/// it does not start without it: a replica that has not read the topic would serve keys
/// revoked elsewhere.
pub const CONTROL_CATCH_UP_MAX: Duration = Duration::from_secs(30);

/// Event ids reconciliation remembers to drop duplicate deliveries.
pub const RECONCILE_DEDUP_WINDOW: usize = 1_000_000;

/// How often the synced log is shipped to Kafka.
pub const KAFKA_SHIP_INTERVAL: Duration = Duration::from_millis(100);

/// How long a hold taken by `/v1/usage/authorize` waits for the job's accounting before it is
/// given back (`ledger.reservation_ttl_ms`): two days covers a queue wait and a day-long job;
/// longer jobs should ask for a longer hold by configuration.
pub const LEDGER_RESERVATION_TTL: Duration = Duration::from_secs(2 * 86_400);

/// Holds kept at once (`ledger.reservations_max`); past it `authorize` with `reserve` gets 503.
pub const LEDGER_RESERVATIONS_MAX: usize = 100_000;

/// How far back usage-record ids are remembered, in days (`ledger.record_window_days`): a
/// record whose usage began earlier is refused, so a forgotten id can never be booked twice.
/// Two months takes last month's statement (storage, a late import) until the end of this one.
pub const LEDGER_RECORD_WINDOW_DAYS: u64 = 62;

/// Record ids remembered at once (`ledger.records_max`): a hash table of 33-byte slots, 1.1 to
/// 2.3 slots an id, so 5 million take 180 to 280 MB at most; two months of 40,000 jobs a day
/// with two units each.
pub const LEDGER_RECORDS_MAX: usize = 5_000_000;

/// Records in one `/v1/usage` batch (`ledger.batch_records_max`).
pub const LEDGER_BATCH_RECORDS_MAX: usize = 10_000;

/// Largest `/v1/usage` body (`ledger.body_bytes_max`): 10,000 records of some 400 bytes.
pub const LEDGER_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

/// How far in the future a record may begin, for clocks that disagree a little; later ones are
/// refused (a future instant would open a budget period early).
pub const LEDGER_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// How often unsettled holds are looked for and given back at most (shorter for short TTLs).
pub const LEDGER_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Largest file `tollgate import` reads.
pub const IMPORT_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Records `tollgate import` sends per request by default.
pub const IMPORT_BATCH_RECORDS: usize = 1_000;

/// Default longest wait for budget held by calls in flight (`admission.wait_ms_max`): long
/// enough for typical calls ahead to finish, short of an SDK's own timeout.
pub const ADMISSION_WAIT_MAX: Duration = Duration::from_secs(10);

/// The most `admission.wait_ms_max` may be.
pub const ADMISSION_WAIT_LIMIT: Duration = Duration::from_secs(600);

/// Default most calls waiting for budget at once, across allocations (`admission.queued_max`).
pub const ADMISSION_QUEUED_MAX: usize = 1024;

/// Default output tokens a call must be able to afford (`admission.output_floor_tokens`).
pub const ADMISSION_OUTPUT_FLOOR_TOKENS: u64 = 16;

/// How often a waiting call at the head of its line tries again without being woken: a
/// safety net for room freed where no wake-up is sent (another allocation's call settling at
/// the shared project or team level, a ledger hold expiring).
pub const ADMISSION_RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// Default percentile of what a key's (or agent's) streams of a model generated that admission
/// holds instead of their declared maximum (`admission.learned_percentile`; 0 holds the
/// declared maximum).
pub const ADMISSION_LEARNED_PERCENTILE: u8 = 99;

/// Default streams a key (or agent) must have finished on a model before what they generated
/// is held instead of the declared maximum (`admission.learned_samples_min`).
pub const ADMISSION_LEARNED_SAMPLES_MIN: u32 = 20;

/// Most keys and agents, times models, whose output is learned apart; past it a new one is
/// held at what the model's streams generate across every key. Each costs about 300 bytes.
pub const LEARNED_SUBJECTS_MAX: usize = 16_384;

/// Default longest a stream is held back while calls in flight hold the room its hold needs to
/// grow (`admission.extend_wait_ms_max`): long enough for calls ahead to settle, short enough
/// that streams all waiting on each other at a budget's end are stopped soon.
pub const ADMISSION_EXTEND_WAIT_MAX: Duration = Duration::from_secs(2);

/// Least time between two operator lines about calls refused without a valid key: a flood of
/// them costs a line a second, each line counting what it stands for.
pub const UNAUTHENTICATED_REPORT_INTERVAL_MS: i64 = 1_000;

/// Most attempts one call may make across its candidates (`routing.attempts_max`, a group's
/// `attempts_max`): each is a request to a provider, so a bound on amplification.
pub const ROUTE_ATTEMPTS_MAX: u32 = 8;

/// Most deployments one provider may have (a `[[provider.deployment]]` each): the standings
/// of a placement are an array on the stack.
pub const DEPLOYMENTS_MAX: usize = 16;

/// The window of the retry budget (`routing.retry_budget_percent`): retries are counted
/// against the calls of the last two.
pub const RETRY_BUDGET_WINDOW_US: i64 = 10_000_000;

/// A `Retry-After` a provider gave with no value the gateway can read is taken as this long
/// for the deployment that gave it.
pub const RETRY_AFTER_DEFAULT: Duration = Duration::from_secs(1);

/// Most bytes of a client-error answer read to tell whether the model's context window refused
/// the call (only when a later candidate of the group declares a wider window).
pub const CONTEXT_ERROR_BYTES_MAX: usize = 64 * 1024;

/// Default partitions of the lease topic (`leases.partitions`): the most coordinators that
/// share the trees. Every replica and coordinator must agree on it.
pub const LEASE_PARTITIONS: usize = 8;

/// The most `leases.partitions` may be.
pub const LEASE_PARTITIONS_MAX: usize = 256;

/// Default time a coordinator may miss heartbeats before its trees move
/// (`leases.session_timeout_ms`): the brokers' default floor is 6 s.
pub const LEASE_SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// Default time a lease no call holds from is kept before it goes back (`leases.idle_ms`).
pub const LEASE_IDLE: Duration = Duration::from_secs(2);

/// Default span of recent spend a replica asks a lease to cover (`leases.horizon_ms`).
pub const LEASE_HORIZON: Duration = Duration::from_secs(1);

/// Default time an ask may go unanswered before it is asked again (`leases.ask_timeout_ms`).
pub const LEASE_ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the lease task looks at every lease: to ask ahead of need, return what is idle.
pub const LEASE_TICK: Duration = Duration::from_millis(20);

/// How often every limited budget's spend is sampled for its burn-rate forecast
/// (`forecast.interval_ms`): the forecast rests on the last few dozen samples.
pub const FORECAST_INTERVAL: Duration = Duration::from_secs(60);

/// Blocks placed and not yet journaled at most (a queue to the control plane; blocks are rare,
/// so one full means the journal is stuck, and the block holds in memory all the same).
pub const GUARD_BLOCKS_QUEUED_MAX: usize = 1_024;

/// How long before a key stops working its owner's team is told (`forecast.key_expiry_warning_ms`;
/// a week leaves a working week to rotate it).
pub const KEY_EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3_600);

/// Longest a webhook delivery waits for its answer (`webhook.timeout_ms`).
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// A webhook's first wait after a failed delivery; each failure doubles it.
pub const WEBHOOK_BACKOFF_MIN: Duration = Duration::from_millis(250);

/// The longest wait between deliveries of an alert a webhook keeps refusing (it is never
/// dropped: delivery is at least once).
pub const WEBHOOK_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How often a webhook with nothing to send looks for a new alert.
pub const WEBHOOK_POLL: Duration = Duration::from_millis(200);

/// The longest alert line a webhook reads.
pub const WEBHOOK_ALERT_BYTES_MAX: u64 = 64 * 1024;

/// The shortest sampling interval the config takes.
pub const FORECAST_INTERVAL_MIN: Duration = Duration::from_millis(100);

/// How often a call waiting for its replica's slice of a shared rate limit looks again (the
/// wait itself is bounded by `leases.ask_timeout_ms`).
pub const RATE_SLICE_POLL: Duration = Duration::from_millis(5);

/// How long after its minute ends the lease fold forgets a rate limit's slices: nothing can be
/// granted or spent in a minute that is over.
pub const RATE_SLICE_FORGET_AFTER: Duration = Duration::from_secs(120);

/// How long a replica waits for the lease log to be read to its end before it serves.
pub const LEASE_CATCH_UP_MAX: Duration = Duration::from_secs(30);

/// A lease serves at least this many of the largest hold asked from it before it asks again.
pub const LEASE_ASKS_AHEAD: u64 = 4;

/// The most last messages `[guards.loop] messages` may fingerprint a call by (and the ring the
/// fingerprint walk keeps): enough to span a tool call, its result and the answer around them.
pub const GUARD_MESSAGES_MAX: usize = 8;

/// A guard tells an alert for the same key, agent or allocation at most this often while it
/// keeps tripping (a block is told once, when it is placed).
pub const GUARD_ALERT_INTERVAL_MS: i64 = 60_000;

/// Default length of a console sign-in (`console.session_ttl_ms`): a working day.
pub const CONSOLE_SESSION_TTL: Duration = Duration::from_secs(8 * 3_600);

/// Shortest `console.session_ttl_ms` allowed.
pub const CONSOLE_SESSION_TTL_MIN: Duration = Duration::from_secs(60);

/// Longest `console.session_ttl_ms` allowed: a week.
pub const CONSOLE_SESSION_TTL_MAX: Duration = Duration::from_secs(7 * 24 * 3_600);

/// Console sessions one replica keeps at once; a sign-in past it ends the oldest (each is a
/// few hundred bytes, so this bounds the table at a few megabytes).
pub const CONSOLE_SESSIONS_MAX: usize = 10_000;

/// Events the console's live tail returns at most in one answer.
pub const CONSOLE_TAIL_EVENTS_MAX: usize = 200;

/// Groups the console's rollups keep of whole usage files (each file's totals by a dimension,
/// a few hundred bytes a group: about 50 MB at the bound), so a dashboard's window is read
/// once; at the bound they are dropped and read again.
pub const ROLLUP_SUMMARY_GROUPS_MAX: usize = 200_000;
