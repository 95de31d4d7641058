//! Usage events into Parquet files, exactly once, from the durable log.
//!
//! [`encode`] turns events into an Arrow batch of [`crate::schema::COLUMNS`]. [`ParquetSink`]
//! reads the log from its checkpoint, writes one zstd file per hour partition the pass touches
//! (`usage/date=YYYY-MM-DD/hour=HH/part-<first>-<last>.parquet`, named by the log range it
//! holds), each to a temporary name, synced, renamed, and only then advances the checkpoint.
//! A file is fed [`SLICE_ROWS`] events at a time ([`UsageFile`]): a pass of a million events
//! holds a slice per partition and the open row group in memory, not the million.
//!
//! **Invariant:** after a crash at any point, each event is in exactly one file: a range whose
//! checkpoint was not committed is read again and produces the same files under the same names
//! (a pass records its range in `usage/_pass` before it publishes, and a pass run again from the
//! same checkpoint stops where that one stopped, however much the log has grown since), and a
//! file that already exists is kept, not written twice. Row count and cost total are
//! checked when a file is written and again when it is read back.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    ArrayRef, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaData};
use parquet::file::properties::WriterProperties;
use tollgate_engine::event::USAGE_EVENT_VERSION;
use tollgate_engine::{UnixMs, UsageEvent};

use crate::log::{self, LogError};
use crate::schema::{
    COLUMNS, ColumnType, DECIMAL_PRECISION, SCHEMA_VERSION_KEY, usage_event_schema,
};

/// Why writing Parquet failed.
#[derive(Debug, thiserror::Error)]
pub enum ColumnarError {
    /// Reading the durable log failed (I/O, or damage in a sealed segment).
    #[error(transparent)]
    Log(#[from] LogError),
    /// Arrow or Parquet refused a batch or a file, or a column read back is missing or of
    /// another type; the text is theirs, or names the column.
    #[error("encoding Parquet: {0}")]
    Encode(String),
    /// Creating, writing, syncing or renaming a file or folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder, as the sink named it.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A log record is not a usage event.
    #[error("log record {offset} is not a usage event: {reason}")]
    NotAnEvent {
        /// Its log offset.
        offset: u64,
        /// What the event parser refused (field and problem).
        reason: String,
    },
    /// A file read back does not hold what it states (its footer's row count, or the row
    /// count and cost total its writer put in its metadata): it is damaged, or not ours.
    #[error("{path}: {quantity} states {stated} but the file holds {read}: damaged file")]
    Corrupt {
        /// The Parquet file read.
        path: String,
        /// Which statement disagrees: `footer rows` or a metadata key.
        quantity: &'static str,
        /// What the file states.
        stated: String,
        /// What was read instead.
        read: String,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ColumnarError + '_ {
    move |source| ColumnarError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn encode_error(e: impl std::fmt::Display) -> ColumnarError {
    ColumnarError::Encode(e.to_string())
}

/// A serde enum's JSON name (`"tokens"`, `"ok"`), the same text the JSON form carries.
fn enum_name<T: serde::Serialize>(value: &T) -> Option<String> {
    match serde_json::to_value(value).ok()? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

fn text<'a>(
    events: &'a [UsageEvent],
    get: impl Fn(&'a UsageEvent) -> Option<Cow<'a, str>>,
) -> ArrayRef {
    Arc::new(events.iter().map(get).collect::<StringArray>())
}

fn int64(events: &[UsageEvent], get: impl Fn(&UsageEvent) -> Option<u64>) -> ArrayRef {
    Arc::new(
        events
            .iter()
            .map(|e| get(e).map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
            .collect::<Int64Array>(),
    )
}

fn int32(events: &[UsageEvent], get: impl Fn(&UsageEvent) -> Option<u32>) -> ArrayRef {
    Arc::new(
        events
            .iter()
            .map(|e| get(e).map(|v| i32::try_from(v).unwrap_or(i32::MAX)))
            .collect::<Int32Array>(),
    )
}

fn decimal(
    events: &[UsageEvent],
    scale: i8,
    get: impl Fn(&UsageEvent) -> Option<u64>,
) -> Result<ArrayRef, ColumnarError> {
    let array = events
        .iter()
        .map(|e| get(e).map(i128::from))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(DECIMAL_PRECISION, scale)
        .map_err(encode_error)?;
    Ok(Arc::new(array))
}

fn str_of(value: &Option<Arc<str>>) -> Option<Cow<'_, str>> {
    value.as_deref().map(Cow::Borrowed)
}

/// The column named `name` for `events`.
fn column(name: &str, ty: ColumnType, events: &[UsageEvent]) -> Result<ArrayRef, ColumnarError> {
    let array = match (name, ty) {
        ("event_id", _) => text(events, |e| Some(Cow::Owned(e.event_id.to_string()))),
        ("ts", _) => Arc::new(
            TimestampMillisecondArray::from_iter_values(events.iter().map(|e| e.ts_ms.0))
                .with_timezone("UTC"),
        ),
        ("kind", _) => text(events, |e| enum_name(&e.kind).map(Cow::Owned)),
        ("v", _) => int32(events, |e| Some(u32::from(e.v))),
        ("request_id", _) => text(events, |e| Some(Cow::Borrowed(&*e.request_id))),
        ("attempt", _) => int32(events, |e| Some(u32::from(e.attempt))),
        ("org", _) => text(events, |e| str_of(&e.org)),
        ("team", _) => text(events, |e| str_of(&e.team)),
        ("project", _) => text(events, |e| str_of(&e.project)),
        ("allocation", _) => text(events, |e| str_of(&e.allocation)),
        ("cost_center", _) => text(events, |e| str_of(&e.cost_center)),
        ("user", _) => text(events, |e| str_of(&e.user)),
        ("agent", _) => text(events, |e| str_of(&e.agent)),
        ("key_id", _) => text(events, |e| e.key_id.map(|k| Cow::Owned(k.to_string()))),
        ("provider", _) => text(events, |e| str_of(&e.provider)),
        ("model", _) => text(events, |e| str_of(&e.model)),
        ("deployment", _) => text(events, |e| str_of(&e.deployment)),
        ("tokens_in", _) => int64(events, |e| Some(e.tokens_in.0)),
        ("tokens_out", _) => int64(events, |e| Some(e.tokens_out.0)),
        ("tokens_cached", _) => int64(events, |e| Some(e.tokens_cached.0)),
        ("tokens_cache_write", _) => int64(events, |e| Some(e.tokens_cache_write.0)),
        ("tokens_reasoning", _) => int64(events, |e| Some(e.tokens_reasoning.0)),
        ("usage_source", _) => text(events, |e| enum_name(&e.usage_source).map(Cow::Owned)),
        ("quantity", ColumnType::Decimal { scale }) => {
            decimal(events, scale, |e| e.quantity_micros.map(|q| q.0))?
        }
        ("unit", _) => text(events, |e| {
            e.unit.as_ref().and_then(enum_name).map(Cow::Owned)
        }),
        ("cluster", _) => text(events, |e| str_of(&e.cluster)),
        ("partition", _) => text(events, |e| str_of(&e.partition)),
        ("instance_type", _) => text(events, |e| str_of(&e.instance_type)),
        ("prompt_prefix", _) => text(events, |e| {
            e.prompt_prefix.map(|p| Cow::Owned(p.to_string()))
        }),
        ("list_cost", ColumnType::Decimal { scale }) => {
            decimal(events, scale, |e| Some(e.list_cost_nanos.0))?
        }
        ("cost", ColumnType::Decimal { scale }) => {
            decimal(events, scale, |e| Some(e.cost_nanos.0))?
        }
        ("currency", _) => text(events, |e| Some(Cow::Borrowed(&*e.currency))),
        ("rate_card_version", _) => text(events, |e| str_of(&e.rate_card_version)),
        ("ttft_ms", _) => int64(events, |e| e.ttft_ms.map(u64::from)),
        ("latency_ms", _) => int64(events, |e| e.latency_ms.map(u64::from)),
        ("status", _) => text(events, |e| enum_name(&e.status).map(Cow::Owned)),
        ("http_status", _) => int32(events, |e| e.http_status.map(u32::from)),
        (other, _) => {
            return Err(ColumnarError::Encode(format!(
                "no encoder for column `{other}`"
            )));
        }
    };
    Ok(array)
}

/// Events as one Arrow batch with the usage-event schema.
pub fn encode(events: &[UsageEvent]) -> Result<RecordBatch, ColumnarError> {
    let columns = COLUMNS
        .iter()
        .map(|c| column(c.name, c.ty, events))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::new(usage_event_schema()), columns).map_err(encode_error)
}

/// Rows per row group: large enough for scans, small enough to skip by statistics.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The key of a usage file's metadata holding when it was written (ms since the epoch, UTC):
/// how a statement tells events that arrived after their billing period closed.
pub const WRITTEN_KEY: &str = "tollgate.written_ms";

/// The key of a usage file's metadata holding its row count (decimal text), as its writer
/// counted the events it was given; a reader compares the rows it reads with it.
pub const ROWS_KEY: &str = "tollgate.rows";

/// The key of a usage file's metadata holding the sum of its events' `cost_nanos` (decimal
/// text, nano-units of the file's currency), as its writer summed them; a reader compares the
/// sum of the `cost` column it reads with it.
pub const COST_NANOS_TOTAL_KEY: &str = "tollgate.cost_nanos_total";

/// A usage file's rows and the sum of their `cost_nanos`: counted by the writer as it is given
/// events, stated in the file's metadata, counted again by a reader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileTotals {
    /// Events, one row each.
    pub rows: u64,
    /// Sum of their `cost_nanos` (128 bits: a sum of `u64` amounts cannot overflow it).
    pub cost_nanos: u128,
}

impl FileTotals {
    /// The totals of `events`, counted one event at a time.
    #[must_use]
    pub fn of(events: &[UsageEvent]) -> FileTotals {
        let mut totals = FileTotals::default();
        for event in events {
            totals.rows += 1;
            totals.cost_nanos += u128::from(event.cost_nanos.0);
        }
        totals
    }
}

fn properties(written: UnixMs) -> Result<WriterProperties, ColumnarError> {
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).map_err(encode_error)?,
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by("tollgate".into())
        // The event schema's version, where every Parquet reader sees it, and when the file
        // was written (corrections are told by it); what the writer was given is added as the
        // file is closed (`UsageFile::publish`), so a reader can tell a damaged file from a
        // whole one.
        .set_key_value_metadata(Some(vec![
            KeyValue::new(
                SCHEMA_VERSION_KEY.to_owned(),
                USAGE_EVENT_VERSION.to_string(),
            ),
            KeyValue::new(WRITTEN_KEY.to_owned(), written.0.to_string()),
        ]))
        .build())
}

/// A usage file being written: events go in a slice at a time, each encoded and handed to the
/// Parquet writer at once, so memory holds a slice and the open row group, never the file.
/// It is written under a temporary name and takes its own only once it is whole and synced.
pub struct UsageFile {
    dir: PathBuf,
    temporary: PathBuf,
    writer: ArrowWriter<File>,
    appended: FileTotals,
    encoded_cost_nanos: u128,
}

impl UsageFile {
    /// Starts a file in `dir` under the temporary name `temporary_name`, stamped as written at
    /// `written` (a file of that name left by a crash is written over).
    pub fn create(
        dir: &Path,
        temporary_name: &str,
        written: UnixMs,
    ) -> Result<UsageFile, ColumnarError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let temporary = dir.join(temporary_name);
        let file = File::create(&temporary).map_err(io_at(&temporary))?;
        let writer = ArrowWriter::try_new(
            file,
            Arc::new(usage_event_schema()),
            Some(properties(written)?),
        )
        .map_err(encode_error)?;
        Ok(UsageFile {
            dir: dir.to_owned(),
            temporary,
            writer,
            appended: FileTotals::default(),
            encoded_cost_nanos: 0,
        })
    }

    /// Encodes `events` and writes them (into the open row group; a full one goes to disk).
    pub fn append(&mut self, events: &[UsageEvent]) -> Result<(), ColumnarError> {
        if events.is_empty() {
            return Ok(());
        }
        let batch = encode(events)?;
        self.encoded_cost_nanos = self
            .encoded_cost_nanos
            .saturating_add(cost_nanos_total(&batch)?);
        let totals = FileTotals::of(events);
        self.appended.rows += totals.rows;
        self.appended.cost_nanos += totals.cost_nanos;
        self.writer.write(&batch).map_err(encode_error)
    }

    /// Closes the file with what it was given in its metadata, asserts its footer and encoded
    /// cost agree with that, syncs it and renames it to `path` (in the folder it was created
    /// in), then syncs the folder. Returns what it holds.
    pub fn publish(mut self, path: &Path) -> Result<FileTotals, ColumnarError> {
        let appended = self.appended;
        self.writer.append_key_value_metadata(KeyValue::new(
            ROWS_KEY.to_owned(),
            appended.rows.to_string(),
        ));
        self.writer.append_key_value_metadata(KeyValue::new(
            COST_NANOS_TOTAL_KEY.to_owned(),
            appended.cost_nanos.to_string(),
        ));
        let footer = self.writer.finish().map_err(encode_error)?;
        assert_written(
            path,
            appended,
            footer.file_metadata().num_rows(),
            self.encoded_cost_nanos,
        );
        self.writer
            .inner()
            .sync_all()
            .map_err(io_at(&self.temporary))?;
        fs::rename(&self.temporary, path).map_err(io_at(path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at(&self.dir))?;
        Ok(appended)
    }

    /// Gives the file up: its temporary name is removed.
    pub fn discard(self) -> Result<(), ColumnarError> {
        let UsageFile {
            temporary, writer, ..
        } = self;
        drop(writer);
        fs::remove_file(&temporary).map_err(io_at(&temporary))
    }
}

/// Events encoded and handed to the Parquet writer at a time: bounds what a pass holds in
/// memory (a slice per partition it touches, and the open row group).
pub const SLICE_ROWS: usize = 8 * 1024;

/// Writes `events` to `path` (through a temporary name, synced, renamed, folder synced),
/// stamped as written now.
pub fn write_file(path: &Path, events: &[UsageEvent]) -> Result<(), ColumnarError> {
    write_file_at(path, events, now_ms())
}

/// [`write_file`], stamped as written at `written`.
///
/// Before the file takes its name, the rows its footer reports and the cost total the encoder
/// produced are asserted equal to what was counted from `events` (a mismatch is a bug in this
/// crate, never bad input, so it stops the process rather than leave a wrong file in place).
pub fn write_file_at(
    path: &Path,
    events: &[UsageEvent],
    written: UnixMs,
) -> Result<(), ColumnarError> {
    let (dir, name) = dir_and_name(path);
    let mut file = UsageFile::create(dir, &format!("{name}.tmp"), written)?;
    for slice in events.chunks(SLICE_ROWS) {
        file.append(slice)?;
    }
    file.publish(path).map(|_| ())
}

/// A file path's folder (`.` when it has none) and name.
fn dir_and_name(path: &Path) -> (&Path, String) {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().map_or_else(
        || "usage.parquet".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    (dir, name)
}

/// The sum of a batch's `cost` column, in nano-units.
fn cost_nanos_total(batch: &RecordBatch) -> Result<u128, ColumnarError> {
    let cost = batch
        .column_by_name("cost")
        .and_then(|c| c.as_any().downcast_ref::<Decimal128Array>())
        .ok_or_else(|| ColumnarError::Encode("no decimal `cost` column".into()))?;
    Ok(sum_nanos(cost))
}

/// The sum of a decimal column of nano-units, nulls as zero. A negative amount (never
/// written by this crate) saturates the sum, so it cannot match a total of `u64` amounts.
fn sum_nanos(column: &Decimal128Array) -> u128 {
    column.iter().flatten().fold(0u128, |sum, value| {
        sum.saturating_add(u128::try_from(value).unwrap_or(u128::MAX))
    })
}

/// The write side of the row and cost pair: the file about to be published holds exactly
/// the events it was given.
fn assert_written(path: &Path, appended: FileTotals, footer_rows: i64, encoded_cost_nanos: u128) {
    assert!(
        u64::try_from(footer_rows) == Ok(appended.rows),
        "{}: footer rows {footer_rows} != events appended {}",
        path.display(),
        appended.rows
    );
    assert!(
        encoded_cost_nanos == appended.cost_nanos,
        "{}: encoded cost_nanos total {encoded_cost_nanos} != cost_nanos appended {}",
        path.display(),
        appended.cost_nanos
    );
}

/// What a usage file states about itself: the footer's row count, and the writer's row count
/// and cost total from its key-value metadata (absent in files written before they existed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stated {
    footer_rows: u64,
    rows: Option<u64>,
    cost_nanos: Option<u128>,
}

impl Stated {
    /// Reads the statement from a file's metadata; a count that is not a number is damage.
    pub(crate) fn of(metadata: &ParquetMetaData, path: &Path) -> Result<Stated, ColumnarError> {
        let file = metadata.file_metadata();
        let footer_rows = u64::try_from(file.num_rows()).map_err(|_| ColumnarError::Corrupt {
            path: path.display().to_string(),
            quantity: "footer rows",
            stated: file.num_rows().to_string(),
            read: "a count".into(),
        })?;
        let value = |key: &str| {
            file.key_value_metadata()
                .and_then(|pairs| pairs.iter().find(|kv| kv.key == key))
                .and_then(|kv| kv.value.as_deref())
        };
        let number = |key: &'static str| -> Result<Option<u128>, ColumnarError> {
            value(key)
                .map(|text| {
                    text.parse::<u128>().map_err(|_| ColumnarError::Corrupt {
                        path: path.display().to_string(),
                        quantity: key,
                        stated: text.to_owned(),
                        read: "a number".into(),
                    })
                })
                .transpose()
        };
        let rows = number(ROWS_KEY)?
            .map(|rows| {
                u64::try_from(rows).map_err(|_| ColumnarError::Corrupt {
                    path: path.display().to_string(),
                    quantity: ROWS_KEY,
                    stated: rows.to_string(),
                    read: "a row count".into(),
                })
            })
            .transpose()?;
        Ok(Stated {
            footer_rows,
            rows,
            cost_nanos: number(COST_NANOS_TOTAL_KEY)?,
        })
    }

    /// Whether the file states a cost total a reader should check (and so must read `cost`).
    pub(crate) fn has_cost_total(&self) -> bool {
        self.cost_nanos.is_some()
    }

    /// The read side of the pair: what was read from the whole file (`read.cost_nanos` only
    /// when `cost_read`) against what it states. A mismatch is a damaged file, an error.
    pub(crate) fn check(
        &self,
        read: FileTotals,
        cost_read: bool,
        path: &Path,
    ) -> Result<(), ColumnarError> {
        let corrupt = |quantity: &'static str, stated: String, found: String| {
            Err(ColumnarError::Corrupt {
                path: path.display().to_string(),
                quantity,
                stated,
                read: found,
            })
        };
        if read.rows != self.footer_rows {
            return corrupt(
                "footer rows",
                self.footer_rows.to_string(),
                read.rows.to_string(),
            );
        }
        if let Some(rows) = self.rows
            && rows != read.rows
        {
            return corrupt(ROWS_KEY, rows.to_string(), read.rows.to_string());
        }
        if let Some(cost_nanos) = self.cost_nanos
            && cost_read
            && cost_nanos != read.cost_nanos
        {
            return corrupt(
                COST_NANOS_TOTAL_KEY,
                cost_nanos.to_string(),
                read.cost_nanos.to_string(),
            );
        }
        Ok(())
    }
}

/// Adds a batch read from a usage file to `read`: its rows, and the sum of its `cost` column
/// when it has one. Returns whether it had one.
pub(crate) fn tally_read(read: &mut FileTotals, batch: &RecordBatch) -> bool {
    read.rows += batch.num_rows() as u64;
    match batch
        .column_by_name("cost")
        .and_then(|c| c.as_any().downcast_ref::<Decimal128Array>())
    {
        Some(cost) => {
            read.cost_nanos = read.cost_nanos.saturating_add(sum_nanos(cost));
            true
        }
        None => false,
    }
}

/// Writes any `batch` to `path` as [`write_file`] does (zstd, temporary name, synced,
/// renamed), with `metadata` as the file's key-value metadata.
pub fn write_batch(
    path: &Path,
    batch: &RecordBatch,
    metadata: &[(&str, &str)],
) -> Result<(), ColumnarError> {
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).map_err(encode_error)?,
        ))
        .set_created_by("tollgate".into())
        .set_key_value_metadata(Some(
            metadata
                .iter()
                .map(|(k, v)| KeyValue::new((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ))
        .build();
    stage(path, batch, properties)?.publish()
}

/// A file written and synced under its temporary name, not yet under its own name.
struct Staged<'a> {
    path: &'a Path,
    dir: &'a Path,
    temporary: PathBuf,
}

fn stage<'a>(
    path: &'a Path,
    batch: &RecordBatch,
    properties: WriterProperties,
) -> Result<Staged<'a>, ColumnarError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    let temporary = path.with_extension("parquet.tmp");
    let file = File::create(&temporary).map_err(io_at(&temporary))?;
    let mut writer =
        ArrowWriter::try_new(file, batch.schema(), Some(properties)).map_err(encode_error)?;
    writer.write(batch).map_err(encode_error)?;
    writer.finish().map_err(encode_error)?;
    writer.inner().sync_all().map_err(io_at(&temporary))?;
    Ok(Staged {
        path,
        dir,
        temporary,
    })
}

impl Staged<'_> {
    /// Renames the file into place and syncs its folder.
    fn publish(self) -> Result<(), ColumnarError> {
        fs::rename(&self.temporary, self.path).map_err(io_at(self.path))?;
        File::open(self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at(self.dir))?;
        Ok(())
    }
}

/// One pass over the log: a file per hour partition its events fall in, each fed a slice at a
/// time; the files are named by the pass's log range once it is known (its end is where the
/// pass stops).
struct Pass {
    first: u64,
    partitions: BTreeMap<String, Partition>,
}

/// A partition's file in a pass, and the events waiting to be encoded into it.
struct Partition {
    file: UsageFile,
    waiting: Vec<UsageEvent>,
}

impl Pass {
    fn new(first: u64) -> Pass {
        Pass {
            first,
            partitions: BTreeMap::new(),
        }
    }

    fn push(&mut self, usage_dir: &Path, event: UsageEvent) -> Result<(), ColumnarError> {
        let key = partition(event.ts_ms);
        let entry = match self.partitions.entry(key) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                let dir = usage_dir.join(entry.key());
                let name = format!("part-{:020}.parquet.tmp", self.first);
                let file = UsageFile::create(&dir, &name, now_ms())?;
                entry.insert(Partition {
                    file,
                    waiting: Vec::with_capacity(SLICE_ROWS),
                })
            }
        };
        entry.waiting.push(event);
        if entry.waiting.len() >= SLICE_ROWS {
            entry.file.append(&entry.waiting)?;
            entry.waiting.clear();
        }
        Ok(())
    }

    /// Publishes each partition's file as `part-<first>-<last>.parquet`, unless a file of that
    /// name is already there (a pass written before a crash, its checkpoint not committed):
    /// then it is kept and this one discarded. Returns the files written and kept.
    fn publish(self, usage_dir: &Path, last: u64) -> Result<(u64, u64), ColumnarError> {
        let (mut files, mut skipped) = (0, 0);
        for (partition, Partition { mut file, waiting }) in self.partitions {
            let path = usage_dir
                .join(partition)
                .join(format!("part-{:020}-{last:020}.parquet", self.first));
            if path.exists() {
                file.discard()?;
                skipped += 1;
                continue;
            }
            file.append(&waiting)?;
            file.publish(&path)?;
            files += 1;
        }
        Ok((files, skipped))
    }
}

/// Now, in ms since the epoch (when a file is stamped as written).
fn now_ms() -> UnixMs {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    UnixMs(now)
}

/// The hour partition of an instant: `date=YYYY-MM-DD/hour=HH`.
#[must_use]
pub fn partition(ts: UnixMs) -> String {
    let c = ts.to_civil();
    format!(
        "date={:04}-{:02}-{:02}/hour={:02}",
        c.year, c.month, c.day, c.hour
    )
}

/// What one pass wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Events read from the log.
    pub events: u64,
    /// Files written by this pass (those it found already written are `skipped_files`).
    pub files: u64,
    /// Files found already written (a pass repeated after a crash).
    pub skipped_files: u64,
    /// The checkpoint after the pass: the next log offset to write.
    pub checkpoint: u64,
}

/// Writes the log into Parquet under `data/usage`, remembering where it got to.
#[derive(Debug)]
pub struct ParquetSink {
    log_dir: PathBuf,
    usage_dir: PathBuf,
    rows_max: usize,
    bytes_max: usize,
}

/// The checkpoint file under `usage/`: the next log offset, as decimal text.
pub const CHECKPOINT_FILE: &str = "_checkpoint";

/// The file under `usage/` naming the log range (`first last`) of the pass whose files are
/// being published, written before the first of them: a pass run again after a crash stops
/// where that one stopped.
pub const PASS_FILE: &str = "_pass";

impl ParquetSink {
    /// A sink from the log in `log_dir` to `data_dir/usage`: a file is cut at `rows_max` events
    /// or `bytes_max` bytes of them (as logged), whichever comes first; the caller's interval
    /// between passes bounds its age.
    #[must_use]
    pub fn new(log_dir: &Path, data_dir: &Path, rows_max: usize, bytes_max: usize) -> ParquetSink {
        ParquetSink {
            log_dir: log_dir.to_owned(),
            usage_dir: data_dir.join("usage"),
            rows_max: rows_max.max(1),
            bytes_max: bytes_max.max(1),
        }
    }

    /// The committed checkpoint (0 when none).
    pub fn checkpoint(&self) -> Result<u64, ColumnarError> {
        let path = self.usage_dir.join(CHECKPOINT_FILE);
        match File::open(&path) {
            Ok(mut file) => {
                let mut text = String::new();
                file.read_to_string(&mut text).map_err(io_at(&path))?;
                text.trim().parse().map_err(|_| ColumnarError::Io {
                    path: path.display().to_string(),
                    source: std::io::Error::other("checkpoint is not a number"),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    fn commit(&self, next: u64) -> Result<(), ColumnarError> {
        self.write_small(CHECKPOINT_FILE, &next.to_string())
    }

    /// The log range of the last pass whose files were being published: `(first, last)`.
    fn pass_begun(&self) -> Result<Option<(u64, u64)>, ColumnarError> {
        let path = self.usage_dir.join(PASS_FILE);
        let mut text = String::new();
        match File::open(&path) {
            Ok(file) => {
                file.take(64)
                    .read_to_string(&mut text)
                    .map_err(io_at(&path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&path)(e)),
        }
        let range = text
            .split_once(' ')
            .and_then(|(first, last)| Some((first.parse().ok()?, last.trim().parse().ok()?)));
        range.map(Some).ok_or_else(|| ColumnarError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other("not two log offsets"),
        })
    }

    /// Writes `text` as `usage/<name>`: a temporary name, synced, renamed, the folder synced.
    fn write_small(&self, name: &str, text: &str) -> Result<(), ColumnarError> {
        fs::create_dir_all(&self.usage_dir).map_err(io_at(&self.usage_dir))?;
        let path = self.usage_dir.join(name);
        let temporary = self.usage_dir.join(format!("{name}.tmp"));
        let mut file = File::create(&temporary).map_err(io_at(&temporary))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_at(&temporary))?;
        fs::rename(&temporary, &path).map_err(io_at(&path))?;
        File::open(&self.usage_dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at(&self.usage_dir))
    }

    /// Writes every batch of up to `rows_max` events from the checkpoint to `until` (exclusive:
    /// the log's synced end, so a file never holds an event the log could still lose); returns
    /// what it did. Call it on a timer and at shutdown.
    pub fn run(&self, until: u64) -> Result<Progress, ColumnarError> {
        let mut progress = Progress {
            checkpoint: self.checkpoint()?,
            ..Progress::default()
        };
        let span = until.saturating_sub(progress.checkpoint);
        let mut records = log::read(&self.log_dir, progress.checkpoint)?
            .take(usize::try_from(span).unwrap_or(usize::MAX))
            .peekable();
        while records.peek().is_some() {
            let first = progress.checkpoint;
            // A pass from here that began publishing before a crash ends where it ended, so its
            // files come out under the same names (and are kept), however much the log grew.
            let end = self
                .pass_begun()?
                .and_then(|(begun, last)| (begun == first).then_some(last));
            let mut pass = Pass::new(first);
            let mut last = first;
            let (mut rows, mut bytes) = (0usize, 0usize);
            while rows < self.rows_max && bytes < self.bytes_max {
                let Some(record) = records.next_if(|record| match (record, end) {
                    (Ok((offset, _)), Some(end)) => *offset <= end,
                    _ => true,
                }) else {
                    break;
                };
                let (offset, payload) = record?;
                // Records an operator gave up as damaged (`log::quarantine`): none to file.
                if log::is_tombstone(&payload) {
                    last = offset;
                    continue;
                }
                rows += 1;
                bytes = bytes.saturating_add(payload.len());
                let event =
                    UsageEvent::from_json(&payload).map_err(|e| ColumnarError::NotAnEvent {
                        offset,
                        reason: e.to_string(),
                    })?;
                pass.push(&self.usage_dir, event)?;
                last = offset;
                progress.events += 1;
            }
            self.write_small(PASS_FILE, &format!("{first} {last}"))?;
            let (files, skipped) = pass.publish(&self.usage_dir, last)?;
            progress.files += files;
            progress.skipped_files += skipped;
            self.commit(last + 1)?;
            progress.checkpoint = last + 1;
        }
        Ok(progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use tollgate_engine::{Nanos, Status};

    fn events(n: u64, ts: UnixMs) -> Vec<UsageEvent> {
        (0..n)
            .map(|i| {
                let mut e = UsageEvent::sample();
                e.event_id =
                    tollgate_engine::EventId::v7(ts, &[u8::try_from(i % 250).unwrap(); 10]);
                e.ts_ms = ts.plus_ms(i64::try_from(i).unwrap() * 60_000);
                e.cost_nanos = Nanos(1_000_000_001 + i);
                e.status = if i % 3 == 0 {
                    Status::BudgetExceeded
                } else {
                    Status::Ok
                };
                if i % 2 == 0 {
                    e.agent = None;
                    e.quantity_micros = None;
                }
                e
            })
            .collect()
    }

    fn read_back(path: &Path) -> RecordBatch {
        let file = File::open(path).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        arrow_select_concat(&batches)
    }

    fn arrow_select_concat(batches: &[RecordBatch]) -> RecordBatch {
        assert_eq!(batches.len(), 1, "one row group in these small files");
        batches[0].clone()
    }

    #[test]
    fn a_file_holds_every_column_exactly() {
        let dir = std::env::temp_dir().join(format!("tollgate-parquet-{}", std::process::id()));
        let path = dir.join("x.parquet");
        let written = events(5, UnixMs(1_764_000_000_000));
        write_file(&path, &written).unwrap();
        let batch = read_back(&path);
        assert_eq!(batch.num_rows(), 5);
        assert_eq!(batch.schema().fields().len(), COLUMNS.len());
        let cost = batch
            .column_by_name("cost")
            .unwrap()
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap();
        let total: i128 = cost.iter().map(Option::unwrap).sum();
        assert_eq!(
            total,
            written
                .iter()
                .map(|e| i128::from(e.cost_nanos.0))
                .sum::<i128>()
        );
        assert_eq!(cost.value_as_string(0), "1.000000001");
        let status = batch
            .column_by_name("status")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(status.value(0), "budget_exceeded");
        let agent = batch.column_by_name("agent").unwrap();
        assert_eq!(agent.null_count(), 3);
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        let version = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .iter()
            .find(|kv| kv.key == SCHEMA_VERSION_KEY)
            .and_then(|kv| kv.value.clone());
        assert_eq!(version.as_deref(), Some("1"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_states_the_rows_and_cost_total_it_was_given() {
        let dir = std::env::temp_dir().join(format!("tollgate-totals-{}", std::process::id()));
        let path = dir.join("x.parquet");
        let written = events(7, UnixMs(1_764_000_000_000));
        write_file(&path, &written).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        let stated = Stated::of(builder.metadata(), &path).unwrap();
        let expected = FileTotals::of(&written);
        assert_eq!(expected.rows, 7);
        assert_eq!(
            expected.cost_nanos,
            written
                .iter()
                .map(|e| u128::from(e.cost_nanos.0))
                .sum::<u128>()
        );
        assert_eq!(
            stated,
            Stated {
                footer_rows: 7,
                rows: Some(7),
                cost_nanos: Some(expected.cost_nanos),
            }
        );
        let mut read = FileTotals::default();
        for batch in builder.build().unwrap() {
            assert!(tally_read(&mut read, &batch.unwrap()));
        }
        assert_eq!(read, expected);
        stated.check(read, true, &path).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    #[should_panic(expected = "footer rows 4 != events appended 5")]
    fn a_footer_short_of_the_events_appended_is_a_bug() {
        let appended = FileTotals {
            rows: 5,
            cost_nanos: 10,
        };
        assert_written(Path::new("x.parquet"), appended, 4, 10);
    }

    #[test]
    #[should_panic(expected = "encoded cost_nanos total 9 != cost_nanos appended 10")]
    fn an_encoded_cost_short_of_the_events_appended_is_a_bug() {
        let appended = FileTotals {
            rows: 5,
            cost_nanos: 10,
        };
        assert_written(Path::new("x.parquet"), appended, 5, 9);
    }

    #[test]
    fn a_read_that_disagrees_with_the_file_is_corrupt_input() {
        let path = Path::new("x.parquet");
        let stated = Stated {
            footer_rows: 3,
            rows: Some(3),
            cost_nanos: Some(30),
        };
        let read = |rows, cost_nanos| FileTotals { rows, cost_nanos };
        stated.check(read(3, 30), true, path).unwrap();
        // The cost is only compared when it was read.
        stated.check(read(3, 29), false, path).unwrap();
        for (totals, quantity) in [
            (read(2, 30), "footer rows"),
            (read(3, 31), COST_NANOS_TOTAL_KEY),
        ] {
            match stated.check(totals, true, path) {
                Err(ColumnarError::Corrupt { quantity: q, .. }) => assert_eq!(q, quantity),
                other => panic!("{totals:?}: {other:?}"),
            }
        }
        let disagreeing = Stated {
            rows: Some(4),
            ..stated
        };
        let error = disagreeing.check(read(3, 30), true, path).unwrap_err();
        assert_eq!(
            error.to_string(),
            "x.parquet: tollgate.rows states 4 but the file holds 3: damaged file"
        );
        // A file from before the keys existed is checked against its footer alone.
        let old = Stated {
            footer_rows: 3,
            rows: None,
            cost_nanos: None,
        };
        old.check(read(3, 0), true, path).unwrap();
    }

    #[test]
    fn files_are_cut_by_bytes_as_well_as_rows() {
        let (root, mut log) = fresh_log("bytes");
        // Ten events in one minute (one hour partition), each well under 2 KB as logged.
        let written = events(10, UnixMs(1_764_000_000_000))
            .into_iter()
            .map(|mut e| {
                e.ts_ms = UnixMs(1_764_000_000_000);
                e
            })
            .collect::<Vec<_>>();
        let payloads: Vec<Vec<u8>> = written.iter().map(UsageEvent::to_json).collect();
        let largest = payloads.iter().map(Vec::len).max().unwrap();
        log.append(&payloads).unwrap();
        // Room for just over two events' bytes: files of three (the one crossing is kept).
        let sink = ParquetSink::new(&root.join("log"), &root.join("data"), 100, 2 * largest + 1);
        let progress = sink.run(u64::MAX).unwrap();
        assert_eq!(progress.events, 10);
        assert_eq!(progress.files, 4, "3 + 3 + 3 + 1");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_pass_larger_than_a_slice_lands_whole_over_a_crash_s_leftover() {
        let (root, mut log) = fresh_log("slices");
        // Three slices and some, alternating between two hours.
        let hours = [UnixMs(1_764_000_000_000), UnixMs(1_764_003_600_000)];
        let written: Vec<UsageEvent> = events(3 * SLICE_ROWS as u64 + 17, hours[0])
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e.ts_ms = hours[i % 2];
                e
            })
            .collect();
        let payloads: Vec<Vec<u8>> = written.iter().map(UsageEvent::to_json).collect();
        log.append(&payloads).unwrap();
        // What a crash mid-pass leaves: a torn temporary file where the pass writes.
        let first_dir = root.join("data/usage").join(partition(hours[0]));
        fs::create_dir_all(&first_dir).unwrap();
        fs::write(
            first_dir.join(format!("part-{:020}.parquet.tmp", 0)),
            b"PAR1 torn",
        )
        .unwrap();

        let sink = ParquetSink::new(&root.join("log"), &root.join("data"), 1_000_000, 1 << 30);
        let progress = sink.run(u64::MAX).unwrap();
        assert_eq!((progress.events, progress.files), (written.len() as u64, 2));
        let files = walk(&root.join("data/usage"));
        let leftover = |f: &&PathBuf| f.extension().is_some_and(|e| e == "tmp");
        assert!(!files.iter().any(|f| leftover(&f)), "{files:?}");
        for (parity, hour) in hours.iter().enumerate() {
            let expected: Vec<&UsageEvent> = written.iter().skip(parity).step_by(2).collect();
            let path = root.join("data/usage").join(partition(*hour)).join(format!(
                "part-{:020}-{:020}.parquet",
                0,
                written.len() - 1
            ));
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
                .unwrap()
                .build()
                .unwrap();
            let (mut rows, mut cost) = (0usize, 0u128);
            for batch in reader {
                let batch = batch.unwrap();
                rows += batch.num_rows();
                cost += cost_nanos_total(&batch).unwrap();
            }
            assert_eq!(rows, expected.len());
            let expected_cost: u128 = expected.iter().map(|e| u128::from(e.cost_nanos.0)).sum();
            assert_eq!(cost, expected_cost, "to the nano");
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_log_lands_in_hour_partitions_exactly_once_across_a_crash() {
        let (root, mut log) = fresh_log("run");
        // 150 events a minute apart: three hours.
        let written = events(150, UnixMs(1_764_000_000_000));
        let payloads: Vec<Vec<u8>> = written.iter().map(UsageEvent::to_json).collect();
        log.append(&payloads).unwrap();
        let sink = ParquetSink::new(&root.join("log"), &root.join("data"), 100, usize::MAX);
        let first = sink.run(u64::MAX).unwrap();
        assert_eq!(first.events, 150);
        assert_eq!(first.checkpoint, 150);
        // A crash between writing files and committing: the pass runs again, finds its files.
        sink.commit(0).unwrap();
        let again = sink.run(u64::MAX).unwrap();
        assert_eq!(again.files, 0);
        assert_eq!(again.skipped_files, first.files);
        let mut rows = 0;
        let mut total = 0i128;
        let mut files = 0;
        for entry in walk(&root.join("data/usage")) {
            if entry.extension().is_some_and(|e| e == "parquet") {
                let batch = read_back(&entry);
                rows += batch.num_rows();
                let cost = batch
                    .column_by_name("cost")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<Decimal128Array>()
                    .unwrap();
                total += cost.iter().map(Option::unwrap).sum::<i128>();
                files += 1;
            }
        }
        assert_eq!(rows, 150, "every event exactly once");
        assert_eq!(
            total,
            written
                .iter()
                .map(|e| i128::from(e.cost_nanos.0))
                .sum::<i128>()
        );
        assert!(files >= 3, "one file per hour a batch touches: {files}");
        // Nothing new: nothing to do.
        assert_eq!(sink.run(u64::MAX).unwrap().events, 0);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_pass_run_again_after_a_crash_stops_where_it_stopped_though_the_log_grew() {
        let (root, mut log) = fresh_log("grew");
        let written = events(200, UnixMs(1_764_000_000_000));
        let payloads: Vec<Vec<u8>> = written.iter().map(UsageEvent::to_json).collect();
        log.append(&payloads[..150]).unwrap();
        let sink = ParquetSink::new(&root.join("log"), &root.join("data"), 1_000, usize::MAX);
        let first = sink.run(u64::MAX).unwrap();
        assert_eq!((first.events, first.checkpoint), (150, 150));
        // A crash after the files, before the checkpoint; then more events before the next pass.
        sink.commit(0).unwrap();
        log.append(&payloads[150..]).unwrap();
        let again = sink.run(u64::MAX).unwrap();
        assert_eq!(again.checkpoint, 200);
        assert_eq!(
            again.skipped_files, first.files,
            "the first pass's files, kept"
        );
        let rows: usize = walk(&root.join("data/usage"))
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
            .map(|f| read_back(f).num_rows())
            .sum();
        assert_eq!(rows, 200, "every event exactly once");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_damaged_pass_record_stops_the_pass_with_its_name_and_loses_nothing() {
        let (root, mut log) = fresh_log("damaged-pass");
        let written = events(20, UnixMs(1_764_000_000_000));
        let payloads: Vec<Vec<u8>> = written.iter().map(UsageEvent::to_json).collect();
        log.append(&payloads).unwrap();
        let sink = ParquetSink::new(&root.join("log"), &root.join("data"), 1_000, usize::MAX);
        fs::create_dir_all(root.join("data/usage")).unwrap();
        fs::write(root.join("data/usage").join(PASS_FILE), "12 not-an-offset").unwrap();
        let refused = sink.run(u64::MAX).unwrap_err().to_string();
        assert!(
            refused.contains(PASS_FILE) && refused.contains("not two log offsets"),
            "{refused}"
        );
        assert_eq!(sink.checkpoint().unwrap(), 0, "nothing skipped");
        // Repaired (here: removed), the pass files every event once.
        fs::remove_file(root.join("data/usage").join(PASS_FILE)).unwrap();
        assert_eq!(sink.run(u64::MAX).unwrap().events, 20);
        fs::remove_dir_all(root).unwrap();
    }

    /// A fresh folder for the test `name`, and a log in its `log/`.
    fn fresh_log(name: &str) -> (PathBuf, crate::log::Log) {
        let root =
            std::env::temp_dir().join(format!("tollgate-sink-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (log, _) =
            crate::log::Log::open(&root.join("log"), crate::log::SEGMENT_BYTES_MAX).unwrap();
        (root, log)
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
