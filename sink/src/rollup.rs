//! Chargeback: totals of the Parquet files grouped by one dimension, exact to the nano.
//!
//! Reads only the columns a report needs, sums cost as the files store it (128-bit decimals,
//! never floats) and keeps the rows whose `ts` falls in `[from, to)`. Tokens, GPU-hours,
//! core-hours, node-hours and GB-months sit side by side, each with its cost, in the one
//! currency of the rate card.
//!
//! **Invariant:** the report's grand total equals the sum of the events it covers, to the unit.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow_array::{
    Array, Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tollgate_engine::UnixMs;

use crate::columnar::{ColumnarError, FileTotals, Stated, tally_read};

/// What a report groups by: one usage column ([`Dimension::column`]). Events with no value
/// in it (identity of a refused unknown key, provider and model of resource usage) are a
/// group of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// The team of the key's or record's allocation.
    Team,
    /// The project of the allocation.
    Project,
    /// The allocation charged: the unit budgets are kept for.
    Allocation,
    /// The key's owner, or a job's user.
    User,
    /// The model as the provider names it; none for resource usage.
    Model,
    /// The provider (`openai`, `anthropic`, ...); none for resource usage.
    Provider,
    /// The allocation's cost center, for chargeback to finance.
    CostCenter,
    /// What was metered: `tokens`, `compute` or `storage`.
    Kind,
    /// Resource unit (`gpu_hour`, ...; none for tokens).
    Unit,
    /// Cluster of resource usage.
    Cluster,
    /// Partition of resource usage.
    Partition,
    /// The agent a key's caller named (`x-tollgate-agent`); none when it named none.
    Agent,
}

impl Dimension {
    /// The usage column whose values name the groups (also the dimension's name).
    #[must_use]
    pub fn column(self) -> &'static str {
        match self {
            Dimension::Team => "team",
            Dimension::Project => "project",
            Dimension::Allocation => "allocation",
            Dimension::User => "user",
            Dimension::Model => "model",
            Dimension::Provider => "provider",
            Dimension::CostCenter => "cost_center",
            Dimension::Kind => "kind",
            Dimension::Unit => "unit",
            Dimension::Cluster => "cluster",
            Dimension::Partition => "partition",
            Dimension::Agent => "agent",
        }
    }

    /// The dimension named as its column is (`team`, `cost_center`, ...); `None` for any
    /// other name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Dimension> {
        Some(match name {
            "team" => Dimension::Team,
            "project" => Dimension::Project,
            "allocation" => Dimension::Allocation,
            "user" => Dimension::User,
            "model" => Dimension::Model,
            "provider" => Dimension::Provider,
            "cost_center" => Dimension::CostCenter,
            "kind" => Dimension::Kind,
            "unit" => Dimension::Unit,
            "cluster" => Dimension::Cluster,
            "partition" => Dimension::Partition,
            "agent" => Dimension::Agent,
            _ => return None,
        })
    }
}

/// One group's totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// The group's value (`None`: events without one, such as refused unknown keys).
    pub key: Option<String>,
    /// Events in the group within the window, refusals (which cost nothing) included.
    pub events: u64,
    /// Billed cost, in nano-units.
    pub cost_nanos: i128,
    /// List cost, in nano-units.
    pub list_cost_nanos: i128,
    /// Prompt tokens, cached ones included.
    pub tokens_in: i64,
    /// Completion tokens, reasoning included.
    pub tokens_out: i64,
    /// Billed cost of model calls, in nano-units.
    pub token_cost_nanos: i128,
    /// GPU-hours, in micro-hours.
    pub gpu_hour_micros: i128,
    /// Core-hours, in micro-hours.
    pub core_hour_micros: i128,
    /// Node-hours, in micro-hours.
    pub node_hour_micros: i128,
    /// Billed cost of GPU-, core- and node-hours, in nano-units.
    pub compute_cost_nanos: i128,
    /// GB-months, in micro-GB-months.
    pub gb_month_micros: i128,
    /// Billed cost of storage, in nano-units.
    pub storage_cost_nanos: i128,
    /// The currency of every amount (one per statement: the rate card's).
    pub currency: Option<String>,
}

impl Row {
    /// Adds `other`'s totals to this row's.
    pub fn add(&mut self, other: &Row) {
        self.events += other.events;
        self.cost_nanos += other.cost_nanos;
        self.list_cost_nanos += other.list_cost_nanos;
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
        self.token_cost_nanos += other.token_cost_nanos;
        self.gpu_hour_micros += other.gpu_hour_micros;
        self.core_hour_micros += other.core_hour_micros;
        self.node_hour_micros += other.node_hour_micros;
        self.compute_cost_nanos += other.compute_cost_nanos;
        self.gb_month_micros += other.gb_month_micros;
        self.storage_cost_nanos += other.storage_cost_nanos;
        if self.currency.is_none() {
            self.currency.clone_from(&other.currency);
        }
    }
}

fn parquet_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ColumnarError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ColumnarError::Io {
                path: dir.display().to_string(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            parquet_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    Ok(())
}

/// Column `name` of `batch` as `T`, or an error naming it.
pub(crate) fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a T, ColumnarError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| ColumnarError::Encode(format!("column `{name}` missing or of another type")))
}

/// Calls `visit` with every batch of the usage files under `data_dir/usage` (only `columns`,
/// and `cost` too when a file states a cost total), and when its file was written (`None` for
/// files from before the stamp existed). After a file's last batch, the rows and cost read are
/// checked against what the file states ([`crate::columnar::ROWS_KEY`] and its kin): a
/// mismatch is a damaged file and ends the read with [`ColumnarError::Corrupt`].
pub(crate) fn for_each_batch(
    data_dir: &Path,
    columns: &[&str],
    visit: impl FnMut(RecordBatch, Option<UnixMs>) -> Result<(), ColumnarError>,
) -> Result<(), ColumnarError> {
    for_each_batch_within(data_dir, columns, (None, None), visit)
}

/// The hour a usage file's partition (`date=YYYY-MM-DD/hour=HH` in its path) covers, as its
/// first instant; `None` for a path outside the layout.
fn partition_hour(path: &Path) -> Option<UnixMs> {
    let mut date = None;
    let mut hour = None;
    for part in path.iter().filter_map(|p| p.to_str()) {
        if let Some(d) = part.strip_prefix("date=") {
            date = Some(d);
        } else if let Some(h) = part.strip_prefix("hour=") {
            hour = Some(h);
        }
    }
    tollgate_engine::time::parse_rfc3339(&format!("{}T{}:00:00Z", date?, hour?)).ok()
}

/// [`for_each_batch`] of the files whose hour partition meets `[from, to)` (and of every file
/// outside the layout): the writers put each event in the partition of its `ts` hour, so a
/// file of an hour wholly outside the window holds none of its events and is not opened.
pub(crate) fn for_each_batch_within(
    data_dir: &Path,
    columns: &[&str],
    window: (Option<UnixMs>, Option<UnixMs>),
    mut visit: impl FnMut(RecordBatch, Option<UnixMs>) -> Result<(), ColumnarError>,
) -> Result<(), ColumnarError> {
    for path in usage_files(data_dir, window)? {
        read_file(&path, columns, &mut visit)?;
    }
    Ok(())
}

/// The usage files under `data_dir/usage` whose hour partition meets `[from, to)` (every
/// file outside the layout too), in path order.
fn usage_files(
    data_dir: &Path,
    (from, to): (Option<UnixMs>, Option<UnixMs>),
) -> Result<Vec<PathBuf>, ColumnarError> {
    let mut files = Vec::new();
    parquet_files(&data_dir.join("usage"), &mut files)?;
    files.retain(|path| {
        partition_hour(path).is_none_or(|start| {
            from.is_none_or(|f| start.plus_ms(HOUR_MS) > f) && to.is_none_or(|t| start < t)
        })
    });
    files.sort();
    Ok(files)
}

const HOUR_MS: i64 = 3_600_000;

/// Calls `visit` with every batch of one usage file (only `columns`, and `cost` when the file
/// states a cost total), then checks what was read against what the file states.
fn read_file(
    path: &Path,
    columns: &[&str],
    visit: &mut impl FnMut(RecordBatch, Option<UnixMs>) -> Result<(), ColumnarError>,
) -> Result<(), ColumnarError> {
    let encode = |e: parquet::errors::ParquetError| ColumnarError::Encode(e.to_string());
    let file = File::open(path).map_err(|source| ColumnarError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(encode)?;
    let stated = Stated::of(builder.metadata(), path)?;
    let written = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|pairs| {
            pairs
                .iter()
                .find(|kv| kv.key == crate::columnar::WRITTEN_KEY)
                .and_then(|kv| kv.value.as_deref()?.parse().ok())
        })
        .map(UnixMs);
    let schema = builder.parquet_schema();
    let cost = stated.has_cost_total().then_some("cost");
    let indices: Vec<usize> = columns
        .iter()
        .copied()
        .chain(cost)
        .filter_map(|name| schema.columns().iter().position(|c| c.name() == name))
        .collect();
    let mask = ProjectionMask::leaves(schema, indices);
    let mut read = FileTotals::default();
    let mut cost_read = true;
    for batch in builder.with_projection(mask).build().map_err(encode)? {
        let batch = batch.map_err(|e| ColumnarError::Encode(e.to_string()))?;
        cost_read &= tally_read(&mut read, &batch);
        visit(batch, written)?;
    }
    stated.check(read, cost_read, path)
}

/// Totals of the events under `data_dir/usage` with `from <= ts < to`, grouped by `by`, in key
/// order.
pub fn report(
    data_dir: &Path,
    from: Option<UnixMs>,
    to: Option<UnixMs>,
    by: Dimension,
) -> Result<Vec<Row>, ColumnarError> {
    report_with(data_dir, (from, to), by, None)
}

/// [`report`], taking the totals of each file the window holds whole from `summaries` (read
/// once, then kept): the same rows, to the unit, without reading those files again.
pub fn report_summarized(
    data_dir: &Path,
    from: Option<UnixMs>,
    to: Option<UnixMs>,
    by: Dimension,
    summaries: &Summaries,
) -> Result<Vec<Row>, ColumnarError> {
    report_with(data_dir, (from, to), by, Some(summaries))
}

/// The columns a report reads.
fn report_columns(by: Dimension) -> [&'static str; 10] {
    [
        "ts",
        by.column(),
        "kind",
        "unit",
        "quantity",
        "cost",
        "list_cost",
        "tokens_in",
        "tokens_out",
        "currency",
    ]
}

fn report_with(
    data_dir: &Path,
    (from, to): (Option<UnixMs>, Option<UnixMs>),
    by: Dimension,
    summaries: Option<&Summaries>,
) -> Result<Vec<Row>, ColumnarError> {
    let wanted = report_columns(by);
    let mut currency: Option<String> = None;
    let mut groups: Groups<Row> = Groups::default();
    for path in usage_files(data_dir, (from, to))? {
        let whole = partition_hour(&path).is_some_and(|start| {
            from.is_none_or(|f| start >= f) && to.is_none_or(|t| start.plus_ms(HOUR_MS) <= t)
        });
        if let (Some(summaries), true) = (summaries, whole) {
            let summary = summaries.of(&path, by, None)?;
            if let Some(c) = &summary.currency {
                one_currency(&mut currency, c)?;
            }
            for (key, row) in &summary.groups {
                groups.get_or_insert(key.as_deref(), Row::default).add(row);
            }
            continue;
        }
        read_file(&path, &wanted, &mut |batch, _written| {
            group_rows(&batch, by, (from, to), None, &mut groups, &mut currency)
        })?;
    }
    Ok(groups
        .into_sorted()
        .into_iter()
        .map(|(key, row)| Row {
            key,
            currency: currency.clone(),
            ..row
        })
        .collect())
}

/// Adds the rows of `batch` with `from <= ts < to` (and those `only` keeps) to `groups`, by
/// `by`; every row's currency must be the first one met.
fn group_rows(
    batch: &RecordBatch,
    by: Dimension,
    (from, to): (Option<UnixMs>, Option<UnixMs>),
    only: Option<Only<'_>>,
    groups: &mut Groups<Row>,
    currency: &mut Option<String>,
) -> Result<(), ColumnarError> {
    let columns = ReportColumns::of(batch, by)?;
    let filtered: Option<&StringArray> = only.map(|o| column(batch, o.by.column())).transpose()?;
    for i in 0..batch.num_rows() {
        let t = UnixMs(columns.ts.value(i));
        if from.is_some_and(|f| t < f) || to.is_some_and(|e| t >= e) {
            continue;
        }
        if let (Some(column), Some(only)) = (filtered, only)
            && (column.is_null(i) || column.value(i) != only.value)
        {
            continue;
        }
        let k = (!columns.key.is_null(i)).then(|| columns.key.value(i));
        one_currency(currency, columns.currency.value(i))?;
        groups.get_or_insert(k, Row::default).add_event(&columns, i);
    }
    Ok(())
}

/// Most groups one file's summary may have to be kept by [`Summaries`].
pub const SUMMARY_GROUPS_PER_FILE_MAX: usize = 256;

/// One usage file's totals by a dimension (and a filter): what [`Summaries`] keeps.
#[derive(Debug)]
struct Summary {
    groups: Vec<(Option<String>, Row)>,
    currency: Option<String>,
}

/// What a summary is of: a file as it is on disk (its length and modification time: usage
/// files are written once under a temporary name and renamed, so a changed file is another
/// one), by a dimension, filtered or not.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SummaryKey {
    path: PathBuf,
    bytes: u64,
    modified: Option<std::time::SystemTime>,
    by: Dimension,
    only: Option<(Dimension, String)>,
}

/// The totals of whole usage files by a dimension, kept across reports so a window's files
/// are read once: a dashboard asking for this month's totals every few seconds reads only
/// the hours it has not read before (and the partial ones at the window's ends). Bounded by
/// the groups held (`groups_max`); at the bound it is emptied and fills again. A file with
/// more than [`SUMMARY_GROUPS_PER_FILE_MAX`] groups by a dimension (every allocation, say) is
/// not kept: reading it again costs no more than its totals would hold, and keeping it would
/// push out the small summaries a dashboard reads.
#[derive(Debug)]
pub struct Summaries {
    groups_max: usize,
    held: std::sync::Mutex<(HashMap<SummaryKey, std::sync::Arc<Summary>>, usize)>,
}

impl Summaries {
    /// An empty cache holding at most `groups_max` groups over all its files.
    #[must_use]
    pub fn new(groups_max: usize) -> Summaries {
        Summaries {
            groups_max,
            held: std::sync::Mutex::new((HashMap::new(), 0)),
        }
    }

    /// The groups held now (over every file).
    #[must_use]
    pub fn groups(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
    }

    /// `path`'s totals by `by` (of its events `only` keeps), read now if not held. The file is
    /// read without the lock held; two readers of one new file both read it.
    fn of(
        &self,
        path: &Path,
        by: Dimension,
        only: Option<Only<'_>>,
    ) -> Result<std::sync::Arc<Summary>, ColumnarError> {
        let meta = fs::metadata(path).map_err(|source| ColumnarError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let key = SummaryKey {
            path: path.to_owned(),
            bytes: meta.len(),
            modified: meta.modified().ok(),
            by,
            only: only.map(|o| (o.by, o.value.to_owned())),
        };
        let lock = || {
            self.held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(found) = lock().0.get(&key) {
            return Ok(std::sync::Arc::clone(found));
        }
        let summary = std::sync::Arc::new(summarize(path, by, only)?);
        if summary.groups.len() > SUMMARY_GROUPS_PER_FILE_MAX {
            return Ok(summary);
        }
        let mut held = lock();
        if held.1 + summary.groups.len() > self.groups_max {
            held.0.clear();
            held.1 = 0;
        }
        if summary.groups.len() <= SUMMARY_GROUPS_PER_FILE_MAX.min(self.groups_max) {
            held.1 += summary.groups.len();
            held.0.insert(key, std::sync::Arc::clone(&summary));
        }
        Ok(summary)
    }
}

/// One whole file's totals by `by`, of the events `only` keeps.
fn summarize(path: &Path, by: Dimension, only: Option<Only<'_>>) -> Result<Summary, ColumnarError> {
    let filter = only.map(|o| o.by.column());
    let wanted: Vec<&str> = report_columns(by).into_iter().chain(filter).collect();
    let mut currency: Option<String> = None;
    let mut groups: Groups<Row> = Groups::default();
    read_file(path, &wanted, &mut |batch, _written| {
        group_rows(&batch, by, (None, None), only, &mut groups, &mut currency)
    })?;
    Ok(Summary {
        groups: groups.into_sorted(),
        currency,
    })
}

/// Rows by a column's value, found without a copy of the value once the group exists (a
/// report reads millions of rows into a few hundred groups).
struct Groups<T> {
    named: HashMap<Box<str>, T>,
    none: Option<T>,
}

impl<T> Default for Groups<T> {
    fn default() -> Self {
        Groups {
            named: HashMap::new(),
            none: None,
        }
    }
}

impl<T> Groups<T> {
    fn get_or_insert(&mut self, key: Option<&str>, make: impl FnOnce() -> T) -> &mut T {
        match key {
            None => self.none.get_or_insert_with(make),
            Some(key) => {
                if !self.named.contains_key(key) {
                    self.named.insert(Box::from(key), make());
                }
                // Inserted just above when missing.
                self.named.get_mut(key).unwrap_or_else(|| unreachable!())
            }
        }
    }

    /// The groups in key order, the one without a value first.
    fn into_sorted(self) -> Vec<(Option<String>, T)> {
        let mut named: Vec<(Box<str>, T)> = self.named.into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        self.none
            .map(|row| (None, row))
            .into_iter()
            .chain(
                named
                    .into_iter()
                    .map(|(k, row)| (Some(k.into_string()), row)),
            )
            .collect()
    }
}

/// Which events a [`series`] covers: those whose `column` is `value` (an allocation's, say).
#[derive(Clone, Copy, Debug)]
pub struct Only<'a> {
    /// The dimension filtered on.
    pub by: Dimension,
    /// The value it must have.
    pub value: &'a str,
}

/// Billed cost over time: per group, the cost of each `step_ms` bucket from `from`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Series {
    /// The first bucket's start (ms since the Unix epoch).
    pub from_ms: i64,
    /// Each bucket's length (ms).
    pub step_ms: i64,
    /// The number of buckets.
    pub buckets: usize,
    /// Per group (in key order; `None`: events without one), its cost in each bucket, in
    /// nano-units.
    pub groups: Vec<(Option<String>, Vec<i128>)>,
    /// The currency of every amount.
    pub currency: Option<String>,
}

/// Most buckets a [`series`] makes: a year of hours is 8,760, so this is more than a chart
/// needs and a bound on what one request can make the reader hold.
pub const SERIES_BUCKETS_MAX: usize = 10_000;

/// The billed cost of the events under `data_dir/usage` with `from <= ts < to` (and `only`,
/// when given), grouped by `by`, in buckets of `step_ms`. Every event of the window is in
/// exactly one bucket, so the buckets of all groups sum to [`report`]'s total for the same
/// window and filter, to the unit.
pub fn series(
    data_dir: &Path,
    from: UnixMs,
    to: UnixMs,
    step_ms: i64,
    by: Dimension,
    only: Option<Only<'_>>,
) -> Result<Series, ColumnarError> {
    series_with(data_dir, (from, to), step_ms, by, only, None)
}

/// [`series`], taking the totals of each file that falls whole in one bucket from `summaries`.
pub fn series_summarized(
    data_dir: &Path,
    (from, to): (UnixMs, UnixMs),
    step_ms: i64,
    by: Dimension,
    only: Option<Only<'_>>,
    summaries: &Summaries,
) -> Result<Series, ColumnarError> {
    series_with(data_dir, (from, to), step_ms, by, only, Some(summaries))
}

fn series_with(
    data_dir: &Path,
    (from, to): (UnixMs, UnixMs),
    step_ms: i64,
    by: Dimension,
    only: Option<Only<'_>>,
    summaries: Option<&Summaries>,
) -> Result<Series, ColumnarError> {
    if step_ms <= 0 || to.0 <= from.0 {
        return Err(ColumnarError::Encode(format!(
            "a series needs a step above 0 and a window that ends after it begins \
             (step {step_ms} ms, {} to {})",
            from.0, to.0
        )));
    }
    let span = i128::from(to.0) - i128::from(from.0);
    let step = i128::from(step_ms);
    let buckets = usize::try_from((span + step - 1) / step).unwrap_or(usize::MAX);
    if buckets > SERIES_BUCKETS_MAX {
        return Err(ColumnarError::Encode(format!(
            "a series of {buckets} buckets: at most {SERIES_BUCKETS_MAX}; take a longer step"
        )));
    }
    let bucket_of = |t: i64| usize::try_from((t - from.0) / step_ms).unwrap_or(0);
    let filter = only.map(|o| o.by.column());
    let wanted: Vec<&str> = ["ts", by.column(), "cost", "currency"]
        .into_iter()
        .chain(filter)
        .collect();
    let mut currency: Option<String> = None;
    let mut groups: Groups<Vec<i128>> = Groups::default();
    for path in usage_files(data_dir, (Some(from), Some(to)))? {
        // A file whose hour lies in the window and in one bucket adds its totals there.
        let bucket = partition_hour(&path).and_then(|start| {
            let last = start.0 + HOUR_MS - 1;
            (start >= from && last < to.0 && bucket_of(start.0) == bucket_of(last))
                .then(|| bucket_of(start.0))
        });
        if let (Some(summaries), Some(bucket)) = (summaries, bucket) {
            let summary = summaries.of(&path, by, only)?;
            if let Some(c) = &summary.currency {
                one_currency(&mut currency, c)?;
            }
            for (key, row) in &summary.groups {
                let cells = groups.get_or_insert(key.as_deref(), || vec![0; buckets]);
                if let Some(cell) = cells.get_mut(bucket) {
                    *cell += row.cost_nanos;
                }
            }
            continue;
        }
        read_file(&path, &wanted, &mut |batch, _written| {
            let ts: &TimestampMillisecondArray = column(&batch, "ts")?;
            let key: &StringArray = column(&batch, by.column())?;
            let cost: &Decimal128Array = column(&batch, "cost")?;
            let currencies: &StringArray = column(&batch, "currency")?;
            let filtered: Option<&StringArray> = filter.map(|f| column(&batch, f)).transpose()?;
            for i in 0..batch.num_rows() {
                let t = ts.value(i);
                if t < from.0 || t >= to.0 {
                    continue;
                }
                if let (Some(column), Some(only)) = (filtered, only)
                    && (column.is_null(i) || column.value(i) != only.value)
                {
                    continue;
                }
                one_currency(&mut currency, currencies.value(i))?;
                let k = (!key.is_null(i)).then(|| key.value(i));
                let cells = groups.get_or_insert(k, || vec![0; buckets]);
                if let Some(cell) = cells.get_mut(bucket_of(t)) {
                    *cell += cost.value(i);
                }
            }
            Ok(())
        })?;
    }
    Ok(Series {
        from_ms: from.0,
        step_ms,
        buckets,
        groups: groups.into_sorted(),
        currency,
    })
}

/// Amounts of two currencies never add up: a report has one, the first it meets (`first`);
/// an event in another is refused.
fn one_currency(first: &mut Option<String>, currency: &str) -> Result<(), ColumnarError> {
    match first {
        Some(first) if first != currency => Err(ColumnarError::Encode(format!(
            "events in two currencies ({first} and {currency}): report each ledger alone"
        ))),
        Some(_) => Ok(()),
        None => {
            *first = Some(currency.to_owned());
            Ok(())
        }
    }
}

/// The columns of one batch of usage a report reads, typed; `key` is the dimension's.
struct ReportColumns<'a> {
    ts: &'a TimestampMillisecondArray,
    key: &'a StringArray,
    cost: &'a Decimal128Array,
    list_cost: &'a Decimal128Array,
    tokens_in: &'a Int64Array,
    tokens_out: &'a Int64Array,
    kind: &'a StringArray,
    unit: &'a StringArray,
    quantity: &'a Decimal128Array,
    currency: &'a StringArray,
}

impl<'a> ReportColumns<'a> {
    /// The batch's columns, or the first one missing.
    fn of(batch: &'a RecordBatch, by: Dimension) -> Result<ReportColumns<'a>, ColumnarError> {
        Ok(ReportColumns {
            ts: column(batch, "ts")?,
            key: column(batch, by.column())?,
            cost: column(batch, "cost")?,
            list_cost: column(batch, "list_cost")?,
            tokens_in: column(batch, "tokens_in")?,
            tokens_out: column(batch, "tokens_out")?,
            kind: column(batch, "kind")?,
            unit: column(batch, "unit")?,
            quantity: column(batch, "quantity")?,
            currency: column(batch, "currency")?,
        })
    }
}

impl Row {
    /// Adds event `i` of `columns`: to the totals, and to its kind's and unit's.
    fn add_event(&mut self, columns: &ReportColumns<'_>, i: usize) {
        let cost = columns.cost.value(i);
        self.events += 1;
        self.cost_nanos += cost;
        self.list_cost_nanos += columns.list_cost.value(i);
        self.tokens_in += columns.tokens_in.value(i);
        self.tokens_out += columns.tokens_out.value(i);
        let q = if columns.quantity.is_null(i) {
            0
        } else {
            columns.quantity.value(i)
        };
        let u = if columns.unit.is_null(i) {
            ""
        } else {
            columns.unit.value(i)
        };
        match (columns.kind.value(i), u) {
            ("tokens", _) => self.token_cost_nanos += cost,
            ("compute", "gpu_hour") => self.gpu_hour_micros += q,
            ("compute", "core_hour") => self.core_hour_micros += q,
            ("compute", "node_hour") => self.node_hour_micros += q,
            ("storage", "gb_month") => self.gb_month_micros += q,
            // A kind or unit this reader does not know: counted in the totals only.
            _ => {}
        }
        match columns.kind.value(i) {
            "compute" => self.compute_cost_nanos += cost,
            "storage" => self.storage_cost_nanos += cost,
            _ => {}
        }
    }
}

/// Writes report rows to a Parquet file at `path` (temporary name, synced, renamed): the group
/// (`by`) as text, counts as integers, money as `DECIMAL(38, 9)`, quantities as
/// `DECIMAL(38, 6)`, and `by` with the window in the file's metadata.
pub fn write_parquet(
    rows: &[Row],
    by: Dimension,
    window: (Option<UnixMs>, Option<UnixMs>),
    path: &Path,
) -> Result<(), ColumnarError> {
    use arrow_array::{ArrayRef, Decimal128Array, Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;
    let encode = |e: arrow_schema::ArrowError| ColumnarError::Encode(e.to_string());
    let decimal = |name: &str, scale: i8, get: &dyn Fn(&Row) -> i128| {
        Decimal128Array::from(rows.iter().map(get).collect::<Vec<_>>())
            .with_precision_and_scale(38, scale)
            .map(|a| {
                (
                    Field::new(name, DataType::Decimal128(38, scale), false),
                    Arc::new(a) as ArrayRef,
                )
            })
            .map_err(encode)
    };
    let int = |name: &str, get: &dyn Fn(&Row) -> i64| {
        (
            Field::new(name, DataType::Int64, false),
            Arc::new(Int64Array::from(rows.iter().map(get).collect::<Vec<_>>())) as ArrayRef,
        )
    };
    let text = |name: &str, get: &dyn Fn(&Row) -> Option<String>| {
        (
            Field::new(name, DataType::Utf8, true),
            Arc::new(StringArray::from(rows.iter().map(get).collect::<Vec<_>>())) as ArrayRef,
        )
    };
    let columns = vec![
        text(by.column(), &|r| r.key.clone()),
        int("events", &|r| i64::try_from(r.events).unwrap_or(i64::MAX)),
        decimal("cost", 9, &|r| r.cost_nanos)?,
        decimal("list_cost", 9, &|r| r.list_cost_nanos)?,
        int("tokens_in", &|r| r.tokens_in),
        int("tokens_out", &|r| r.tokens_out),
        decimal("token_cost", 9, &|r| r.token_cost_nanos)?,
        decimal("gpu_hours", 6, &|r| r.gpu_hour_micros)?,
        decimal("core_hours", 6, &|r| r.core_hour_micros)?,
        decimal("node_hours", 6, &|r| r.node_hour_micros)?,
        decimal("compute_cost", 9, &|r| r.compute_cost_nanos)?,
        decimal("gb_months", 6, &|r| r.gb_month_micros)?,
        decimal("storage_cost", 9, &|r| r.storage_cost_nanos)?,
        text("currency", &|r| r.currency.clone()),
    ];
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(encode)?;
    let instant = |t: Option<UnixMs>| t.map_or_else(String::new, |t| t.0.to_string());
    let (from, to) = (instant(window.0), instant(window.1));
    crate::columnar::write_batch(
        path,
        &batch,
        &[
            ("tollgate.report.by", by.column()),
            ("tollgate.report.from_ms", &from),
            ("tollgate.report.to_ms", &to),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columnar::write_file;
    use tollgate_engine::{Nanos, UsageEvent};

    /// `events` written with `metadata` in place of a usage file's own.
    fn write_stating(path: &Path, events: &[UsageEvent], metadata: &[(&str, &str)]) {
        let batch = crate::columnar::encode(events).unwrap();
        crate::columnar::write_batch(path, &batch, metadata).unwrap();
    }

    #[test]
    fn summarized_reports_and_series_equal_the_ones_read_whole() {
        let root = std::env::temp_dir().join(format!("tollgate-summaries-{}", std::process::id()));
        let hour = 3_600_000;
        let start = 1_764_000_000_000 - 1_764_000_000_000 % (24 * hour);
        // Fifty hours of events, a few an hour, over three allocations and two models.
        for h in 0..50 {
            let events: Vec<UsageEvent> = (0..4i64)
                .map(|i| {
                    let mut e = UsageEvent::sample();
                    e.ts_ms = UnixMs(start + h * hour + i * 900_000 + 7);
                    e.allocation = Some(["a", "b", "c"][((h + i) % 3) as usize].into());
                    e.model = Some(["m1", "m2"][(i % 2) as usize].into());
                    e.cost_nanos = Nanos(u64::try_from(1 + h * 10 + i).unwrap());
                    e
                })
                .collect();
            let path = root
                .join("usage")
                .join(crate::columnar::partition(UnixMs(start + h * hour)))
                .join("part.parquet");
            write_file(&path, &events).unwrap();
        }
        let summaries = Summaries::new(1_000);
        for (from, to) in [
            (start, start + 50 * hour),
            (start + 3 * hour, start + 27 * hour),
            (start + 3 * hour + 1, start + 27 * hour - 1),
            (start - hour, start + 2 * hour + 900_000),
        ] {
            let (from, to) = (UnixMs(from), UnixMs(to));
            for by in [Dimension::Allocation, Dimension::Model] {
                let whole = report(&root, Some(from), Some(to), by).unwrap();
                for _ in 0..2 {
                    let summed =
                        report_summarized(&root, Some(from), Some(to), by, &summaries).unwrap();
                    assert_eq!(summed, whole, "{by:?} {from:?}..{to:?}");
                }
                let only = Only {
                    by: Dimension::Allocation,
                    value: "b",
                };
                for step in [hour, 24 * hour, 5 * hour] {
                    let plain = series(&root, from, to, step, by, Some(only)).unwrap();
                    let summed =
                        series_summarized(&root, (from, to), step, by, Some(only), &summaries)
                            .unwrap();
                    assert_eq!(summed, plain, "{by:?} step {step}");
                }
            }
        }
        assert!(summaries.groups() > 0);
        // At its bound the cache empties and fills again; the answers stay the same.
        let tight = Summaries::new(3);
        let (from, to) = (UnixMs(start), UnixMs(start + 50 * hour));
        let whole = report(&root, Some(from), Some(to), Dimension::Model).unwrap();
        let summed = report_summarized(&root, Some(from), Some(to), Dimension::Model, &tight);
        assert_eq!(summed.unwrap(), whole);
        assert!(tight.groups() <= 3);
        // A file with more groups than a summary keeps is read each time, and pushes nothing out.
        let wide: Vec<UsageEvent> = (0..=SUMMARY_GROUPS_PER_FILE_MAX)
            .map(|i| {
                let mut e = UsageEvent::sample();
                e.ts_ms = UnixMs(start + 50 * hour + 1);
                e.allocation = Some(format!("wide-{i}").into());
                e
            })
            .collect();
        let path = root
            .join("usage")
            .join(crate::columnar::partition(UnixMs(start + 50 * hour)))
            .join("part.parquet");
        write_file(&path, &wide).unwrap();
        let fresh = Summaries::new(1_000_000);
        let (from, to) = (UnixMs(start + 50 * hour), UnixMs(start + 51 * hour));
        let rows = report_summarized(&root, Some(from), Some(to), Dimension::Allocation, &fresh);
        assert_eq!(rows.unwrap().len(), wide.len());
        assert_eq!(fresh.groups(), 0, "not kept");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_window_opens_only_the_hour_partitions_it_meets() {
        let root = std::env::temp_dir().join(format!("tollgate-prune-{}", std::process::id()));
        let hour = 3_600_000;
        let start = 1_764_000_000_000 - 1_764_000_000_000 % hour;
        let mut e = UsageEvent::sample();
        e.ts_ms = UnixMs(start + 5);
        e.cost_nanos = Nanos(7);
        let partition = crate::columnar::partition(UnixMs(start));
        write_file(&root.join("usage").join(&partition).join("a.parquet"), &[e]).unwrap();
        // The next hour's file is damaged: a window that meets that hour fails on it, one
        // that does not never opens it.
        let next = crate::columnar::partition(UnixMs(start + hour));
        let damaged = root.join("usage").join(&next).join("b.parquet");
        std::fs::create_dir_all(damaged.parent().unwrap()).unwrap();
        std::fs::write(&damaged, b"not parquet").unwrap();
        let total = |from: i64, to: i64| {
            report(&root, Some(UnixMs(from)), Some(UnixMs(to)), Dimension::Team)
                .map(|rows| rows.iter().map(|r| r.cost_nanos).sum::<i128>())
        };
        assert_eq!(total(start, start + hour).unwrap(), 7);
        assert_eq!(total(start - hour, start + 6).unwrap(), 7);
        assert_eq!(total(start - hour, start).unwrap(), 0);
        assert!(total(start, start + hour + 1).is_err());
        assert!(report(&root, None, None, Dimension::Team).is_err());
        assert_eq!(
            partition_hour(Path::new("usage/date=2026-12-03/hour=17/x.parquet")),
            UnixMs::from_civil(tollgate_engine::time::CivilTime {
                year: 2026,
                month: 12,
                day: 3,
                hour: 17,
                minute: 0,
                second: 0,
                millisecond: 0
            })
        );
        for outside in [
            "usage/x.parquet",
            "usage/date=2026-13-01/hour=01/x.parquet",
            "usage/date=2026-12-03/hour=24/x.parquet",
        ] {
            assert_eq!(partition_hour(Path::new(outside)), None, "{outside}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_series_puts_each_event_in_one_bucket_and_sums_to_the_report() {
        let root = std::env::temp_dir().join(format!("tollgate-series-{}", std::process::id()));
        let hour = 3_600_000;
        let start = 1_764_000_000_000 - 1_764_000_000_000 % hour;
        let event = |minute: i64, model: &str, allocation: &str, cost: u64| {
            let mut e = UsageEvent::sample();
            e.ts_ms = UnixMs(start + minute * 60_000);
            e.model = Some(model.into());
            e.allocation = Some(allocation.into());
            e.cost_nanos = Nanos(cost);
            e
        };
        let events = [
            event(0, "a", "x", 1),
            event(59, "a", "x", 2),
            event(60, "b", "x", 4),
            event(61, "a", "y", 8),
            event(179, "a", "x", 16),
            // Outside the window: before it, and at its end.
            event(-1, "a", "x", 32),
            event(180, "a", "x", 64),
        ];
        write_file(&root.join("usage/hour.parquet"), &events).unwrap();
        let (from, to) = (UnixMs(start), UnixMs(start + 3 * hour));
        let only = Only {
            by: Dimension::Allocation,
            value: "x",
        };
        let got = series(&root, from, to, hour, Dimension::Model, Some(only)).unwrap();
        assert_eq!(got.buckets, 3);
        assert_eq!(
            got.groups,
            vec![
                (Some("a".to_owned()), vec![3, 0, 16]),
                (Some("b".to_owned()), vec![0, 4, 0]),
            ]
        );
        let all = series(&root, from, to, hour, Dimension::Allocation, None).unwrap();
        let bucketed: i128 = all.groups.iter().flat_map(|(_, cells)| cells).sum();
        let reported: i128 = report(&root, Some(from), Some(to), Dimension::Allocation)
            .unwrap()
            .iter()
            .map(|r| r.cost_nanos)
            .sum();
        assert_eq!((bucketed, reported), (31, 31));
        assert!(series(&root, to, from, hour, Dimension::Model, None).is_err());
        assert!(series(&root, from, to, 0, Dimension::Model, None).is_err());
        assert!(series(&root, from, UnixMs(i64::MAX), 1, Dimension::Model, None).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_file_that_does_not_hold_what_it_states_is_refused() {
        use crate::columnar::{COST_NANOS_TOTAL_KEY, ROWS_KEY};
        let root = std::env::temp_dir().join(format!("tollgate-stated-{}", std::process::id()));
        let events: Vec<UsageEvent> = (0..3u64)
            .map(|i| {
                let mut e = UsageEvent::sample();
                e.cost_nanos = Nanos(100 + i);
                e
            })
            .collect();
        let total = events
            .iter()
            .map(|e| u128::from(e.cost_nanos.0))
            .sum::<u128>()
            .to_string();
        let path = root.join("usage/part.parquet");
        for (rows, cost, damaged) in [
            ("3", total.as_str(), None),
            ("4", total.as_str(), Some(ROWS_KEY)),
            ("3", "302", Some(COST_NANOS_TOTAL_KEY)),
            ("three", total.as_str(), Some(ROWS_KEY)),
        ] {
            let _ = fs::remove_dir_all(&root);
            write_stating(
                &path,
                &events,
                &[(ROWS_KEY, rows), (COST_NANOS_TOTAL_KEY, cost)],
            );
            let got = report(&root, None, None, Dimension::Team);
            match (damaged, got) {
                (None, Ok(rows)) => assert_eq!(rows.iter().map(|r| r.events).sum::<u64>(), 3),
                (Some(key), Err(ColumnarError::Corrupt { quantity, .. })) => {
                    assert_eq!(quantity, key, "{rows} rows, {cost} cost");
                }
                (expected, got) => panic!("{rows} rows, {cost} cost: {expected:?} {got:?}"),
            }
            // The FOCUS statement reads the same files through `for_each_batch`, so through
            // the same check (rollup stays below focus: its tests do not reach up into it).
        }
        // A file from before the keys existed is read on its footer's word alone.
        let _ = fs::remove_dir_all(&root);
        write_stating(&path, &events, &[]);
        let rows = report(&root, None, None, Dimension::Team).unwrap();
        assert_eq!(rows.iter().map(|r| r.cost_nanos).sum::<i128>(), 303);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn totals_by_dimension_and_time_are_exact() {
        let root = std::env::temp_dir().join(format!("tollgate-rollup-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mut events = Vec::new();
        for i in 0..30u64 {
            let mut e = UsageEvent::sample();
            e.ts_ms = UnixMs(1_764_000_000_000 + i64::try_from(i).unwrap() * 3_600_000);
            e.team = if i % 3 == 0 {
                None
            } else {
                Some(format!("team-{}", i % 2).into())
            };
            e.cost_nanos = Nanos(999_999_999 + i);
            events.push(e);
        }
        // Some GPU-hours and GB-months beside the tokens.
        for (i, e) in events.iter_mut().enumerate() {
            match i % 5 {
                1 => {
                    e.kind = tollgate_engine::EventKind::Compute;
                    e.unit = Some(tollgate_engine::ResourceUnit::GpuHour);
                    e.quantity_micros = Some(tollgate_engine::Micros(1_500_000));
                }
                2 => {
                    e.kind = tollgate_engine::EventKind::Storage;
                    e.unit = Some(tollgate_engine::ResourceUnit::GbMonth);
                    e.quantity_micros = Some(tollgate_engine::Micros(250));
                }
                _ => {
                    e.unit = None;
                    e.quantity_micros = None;
                }
            }
        }
        crate::columnar::write_file(&root.join("usage/a/part.parquet"), &events[..10]).unwrap();
        crate::columnar::write_file(&root.join("usage/b/part.parquet"), &events[10..]).unwrap();
        let rows = report(&root, None, None, Dimension::Team).unwrap();
        let total: i128 = rows.iter().map(|r| r.cost_nanos).sum();
        assert_eq!(
            total,
            events
                .iter()
                .map(|e| i128::from(e.cost_nanos.0))
                .sum::<i128>()
        );
        assert_eq!(rows.iter().map(|r| r.events).sum::<u64>(), 30);
        let mut all = Row::default();
        for r in &rows {
            all.add(r);
        }
        assert_eq!(all.gpu_hour_micros, 6 * 1_500_000);
        assert_eq!(all.gb_month_micros, 6 * 250);
        assert_eq!(all.core_hour_micros, 0);
        assert_eq!(
            all.token_cost_nanos + all.compute_cost_nanos + all.storage_cost_nanos,
            all.cost_nanos,
            "every event's cost is in exactly one kind"
        );
        assert!(all.compute_cost_nanos > 0 && all.storage_cost_nanos > 0);
        assert_eq!(
            rows[0].key, None,
            "events without a team are a group of their own"
        );
        // A window of hours 5 to 15.
        let from = UnixMs(1_764_000_000_000 + 5 * 3_600_000);
        let to = UnixMs(1_764_000_000_000 + 15 * 3_600_000);
        let windowed = report(&root, Some(from), Some(to), Dimension::Team).unwrap();
        assert_eq!(windowed.iter().map(|r| r.events).sum::<u64>(), 10);
        assert_eq!(
            windowed.iter().map(|r| r.cost_nanos).sum::<i128>(),
            events[5..15]
                .iter()
                .map(|e| i128::from(e.cost_nanos.0))
                .sum::<i128>()
        );
        fs::remove_dir_all(root).unwrap();
    }
}
