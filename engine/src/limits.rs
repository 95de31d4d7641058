//! Every limit the engine enforces, in one place, with why it is what it is.

/// Largest config file (rate card, directory) read: 16 MiB holds a rate card with tens of
/// thousands of model entries while keeping a mistaken path to a huge file from eating memory.
pub const CONFIG_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Rate card versions kept: one a day for 27 years; bounds the binary search and memory.
pub const RATE_CARD_VERSIONS_MAX: usize = 10_000;

/// Entries on a key's or allocation's model allow-list.
pub const ALLOW_LIST_ENTRIES_MAX: usize = 1_024;

/// Random bytes in a key secret: 160 bits, above the 128 the threat model asks for.
pub const KEY_SECRET_BYTES: usize = 20;

/// Longest presented key considered; anything longer is refused before hashing.
pub const PRESENTED_KEY_BYTES_MAX: usize = 256;

/// Longest usage-record id (`slurm:<cluster>:<job>:<unit>`, an OpenCost name with its window):
/// room for any source's natural key, small enough that ids cost little in the index.
pub const RECORD_ID_BYTES_MAX: usize = 256;

/// Longest allocation, cluster, partition, instance type or user name on a usage record.
pub const RECORD_NAME_BYTES_MAX: usize = 128;
