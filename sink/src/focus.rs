//! The chargeback statement in the FinOps FOCUS format (version 1.0), so FinOps tools take it as
//! they take a cloud bill.
//!
//! One row per hour, provider, model, allocation and rate-card version for model calls, and per
//! hour, unit, cluster, partition, instance type and allocation for resource usage (the hour
//! the usage began): `BilledCost`, `EffectiveCost` and `ContractedCost` are what budgets were
//! charged, `ListCost` the list price, charge periods are the hour (start inclusive, end
//! exclusive, UTC), billing periods the month. Model calls are `AI and Machine Learning` counted
//! in tokens; GPU-, core- and node-hours are `Compute` and GB-months `Storage`, with their
//! quantities as `ConsumedQuantity` and `PricingQuantity`.
//! Our own columns are prefixed `x_`. The FinOps Foundation's validator (1.0 rule set) accepts
//! the output; its 1.0 rules still read the pre-1.0 `ChargeType`, so that column is written too.
//! Amounts are exact decimals.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use tollgate_engine::UnixMs;
use tollgate_engine::time::Period;

use crate::columnar::ColumnarError;

/// The FOCUS specification version statements follow, stated in `x_FocusVersion` and in
/// the Parquet file's metadata.
pub const FOCUS_VERSION: &str = "1.0";

/// The statement's columns in the order written: FOCUS's own, alphabetically, then ours,
/// prefixed `x_`.
pub const COLUMNS: &[&str] = &[
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ChargeType",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceIssuer",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "Provider",
    "Publisher",
    "RegionId",
    "RegionName",
    "ResourceID",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "SkuId",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    "x_Team",
    "x_Project",
    "x_CostCenter",
    "x_Model",
    "x_RateCardVersion",
    "x_TokensIn",
    "x_TokensOut",
    "x_Events",
    "x_FocusVersion",
    "x_Kind",
    "x_Cluster",
    "x_Partition",
    "x_InstanceType",
];

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    hour: i64,
    /// For an event that reached the files after its billing period closed: the billing period
    /// (month index) it is corrected in.
    corrected_in: Option<i64>,
    kind: String,
    unit: String,
    cluster: String,
    partition: String,
    instance_type: String,
    org: String,
    provider: String,
    model: String,
    allocation: String,
    team: String,
    project: String,
    cost_center: String,
    currency: String,
    rate_card_version: String,
}

#[derive(Clone, Debug, Default)]
struct Sums {
    quantity_micros: i128,
    cost: i128,
    list_cost: i128,
    tokens_in: i64,
    tokens_out: i64,
    events: u64,
}

const HOUR_MS: i64 = 3_600_000;

fn iso(t: UnixMs) -> String {
    let c = t.to_civil();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

fn decimal(nanos: i128) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let magnitude = nanos.unsigned_abs();
    format!(
        "{sign}{}.{:09}",
        magnitude / 1_000_000_000,
        magnitude % 1_000_000_000
    )
}

/// An exact decimal of micro-units with six places: `12.345675`.
fn quantity(micros: i128) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let magnitude = micros.unsigned_abs();
    format!(
        "{sign}{}.{:06}",
        magnitude / 1_000_000,
        magnitude % 1_000_000
    )
}

/// FOCUS's unit spelling (its UnitFormat: plural units, a hyphen, a time unit).
fn focus_unit(unit: &str) -> &'static str {
    match unit {
        "gpu_hour" => "GPU-Hours",
        "core_hour" => "Core-Hours",
        "node_hour" => "Node-Hours",
        "gb_month" => "GB-Months",
        _ => "Units",
    }
}

fn csv_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray, ColumnarError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| ColumnarError::Encode(format!("column `{name}` missing")))
}

fn text(array: &StringArray, i: usize) -> String {
    if array.is_null(i) {
        String::new()
    } else {
        array.value(i).to_owned()
    }
}

/// Writes the FOCUS CSV of the events under `data_dir/usage` with `from <= ts < to` to `out`.
/// Events without an allocation (refusals of unknown keys, which cost nothing) have no account
/// to charge and are left out.
pub fn export_csv(
    data_dir: &Path,
    from: Option<UnixMs>,
    to: Option<UnixMs>,
    out: &mut impl std::io::Write,
) -> Result<u64, ColumnarError> {
    let io = |source| ColumnarError::Io {
        path: "(output)".into(),
        source,
    };
    writeln!(out, "{}", COLUMNS.join(",")).map_err(io)?;
    statement(data_dir, from, to, |values| {
        let mut line = String::new();
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            csv_field(&mut line, value);
        }
        let _ = writeln!(line);
        out.write_all(line.as_bytes()).map_err(io)
    })
}

/// Money columns: exact decimals of nano-units in Parquet.
const MONEY_COLUMNS: [&str; 6] = [
    "BilledCost",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "ListCost",
    "ListUnitPrice",
];
/// Quantity columns: exact decimals of millionths.
const QUANTITY_COLUMNS: [&str; 2] = ["ConsumedQuantity", "PricingQuantity"];
/// Instant columns: RFC 3339 text in CSV, UTC millisecond timestamps in Parquet.
const TIME_COLUMNS: [&str; 4] = [
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargePeriodEnd",
    "ChargePeriodStart",
];
/// Count columns: decimal integers in CSV, 64-bit integers in Parquet.
const COUNT_COLUMNS: [&str; 3] = ["x_TokensIn", "x_TokensOut", "x_Events"];

/// The key of the Parquet file's metadata naming the FOCUS version, so a reader can tell 1.0
/// from the versions that follow.
pub const FOCUS_VERSION_KEY: &str = "focus_version";

/// Writes the same statement as [`export_csv`] to a Parquet file at `path` (temporary name,
/// synced, renamed): money as `DECIMAL(38, 9)`, quantities as `DECIMAL(38, 6)`, periods as UTC
/// timestamps, counts as integers, the rest as text (empty as null), and the FOCUS version in
/// the file's metadata (`focus_version`). Returns the rows written.
pub fn export_parquet(
    data_dir: &Path,
    from: Option<UnixMs>,
    to: Option<UnixMs>,
    path: &Path,
) -> Result<u64, ColumnarError> {
    let mut columns: Vec<Vec<String>> = vec![Vec::new(); COLUMNS.len()];
    let rows = statement(data_dir, from, to, |values| {
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value.clone());
        }
        Ok(())
    })?;
    let mut fields = Vec::with_capacity(COLUMNS.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(COLUMNS.len());
    for (name, values) in COLUMNS.iter().zip(&columns) {
        let (field, array) = typed_column(name, values)?;
        fields.push(field);
        arrays.push(array);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch =
        RecordBatch::try_new(schema, arrays).map_err(|e| ColumnarError::Encode(e.to_string()))?;
    crate::columnar::write_batch(
        path,
        &batch,
        &[
            (FOCUS_VERSION_KEY, FOCUS_VERSION),
            ("focus_dataset", "CostAndUsage"),
        ],
    )?;
    Ok(rows)
}

/// A statement value that does not parse as its column's type (a bug in [`statement`]).
fn bad(name: &str, value: &str) -> ColumnarError {
    ColumnarError::Encode(format!(
        "FOCUS column {name}: `{value}` is not what it should be"
    ))
}

/// The FOCUS column `name` typed for Parquet by what it holds: money, quantity, instant,
/// count, or text.
fn typed_column(name: &str, values: &[String]) -> Result<(Field, ArrayRef), ColumnarError> {
    if MONEY_COLUMNS.contains(&name) {
        decimal_column(name, values, 9)
    } else if QUANTITY_COLUMNS.contains(&name) {
        decimal_column(name, values, 6)
    } else if TIME_COLUMNS.contains(&name) {
        let instants: Result<Vec<Option<i64>>, ColumnarError> = values
            .iter()
            .map(|v| {
                tollgate_engine::time::parse_rfc3339(v)
                    .map(|t| Some(t.0))
                    .map_err(|_| bad(name, v))
            })
            .collect();
        let array = TimestampMillisecondArray::from(instants?).with_timezone("UTC");
        let ty = DataType::Timestamp(TimeUnit::Millisecond, Some(Arc::from("UTC")));
        Ok((Field::new(name, ty, false), Arc::new(array)))
    } else if COUNT_COLUMNS.contains(&name) {
        let counts: Result<Vec<i64>, ColumnarError> = values
            .iter()
            .map(|v| v.parse().map_err(|_| bad(name, v)))
            .collect();
        Ok((
            Field::new(name, DataType::Int64, false),
            Arc::new(Int64Array::from(counts?)),
        ))
    } else {
        let texts: Vec<Option<&str>> = values
            .iter()
            .map(|v| (!v.is_empty()).then_some(v.as_str()))
            .collect();
        Ok((
            Field::new(name, DataType::Utf8, true),
            Arc::new(StringArray::from(texts)),
        ))
    }
}

/// A `DECIMAL(38, scale)` column of exact decimals, empty as null.
fn decimal_column(
    name: &str,
    values: &[String],
    scale: u32,
) -> Result<(Field, ArrayRef), ColumnarError> {
    let scaled = values
        .iter()
        .map(|v| {
            if v.is_empty() {
                Ok(None)
            } else {
                parse_scaled(v, scale).map(Some).ok_or_else(|| bad(name, v))
            }
        })
        .collect::<Result<Vec<Option<i128>>, ColumnarError>>()?;
    let arrow_scale = i8::try_from(scale).unwrap_or(i8::MAX);
    let array = Decimal128Array::from(scaled)
        .with_precision_and_scale(38, arrow_scale)
        .map_err(|e| ColumnarError::Encode(e.to_string()))?;
    Ok((
        Field::new(name, DataType::Decimal128(38, arrow_scale), true),
        Arc::new(array),
    ))
}

/// `text` (a plain decimal, at most `scale` decimals) times 10^`scale`.
fn parse_scaled(text: &str, scale: u32) -> Option<i128> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || fraction.len() > scale as usize
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut value: i128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        value = value.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    value = value.checked_mul(10_i128.checked_pow(scale - fraction.len() as u32)?)?;
    Some(if negative { -value } else { value })
}

/// How long after its billing period (a month) ends an event may still reach the files and be
/// billed in it; later, it is a correction billed in the period it arrived.
pub const SETTLEMENT_GRACE_MS: i64 = 3_600_000;

/// The billing period (month index) an event of instant `at` written at `written` is corrected
/// in, if it arrived after its own period was settled.
fn correction_month(at: UnixMs, written: UnixMs) -> Option<i64> {
    let own = Period::Month.index(at);
    let settled = Period::Month
        .end(own)?
        .0
        .saturating_add(SETTLEMENT_GRACE_MS);
    (written.0 >= settled).then(|| Period::Month.index(written))
}

/// Builds the statement's rows (values in [`COLUMNS`] order) and hands each to `emit`; returns
/// how many.
fn statement(
    data_dir: &Path,
    from: Option<UnixMs>,
    to: Option<UnixMs>,
    mut emit: impl FnMut(&[String]) -> Result<(), ColumnarError>,
) -> Result<u64, ColumnarError> {
    let rows = sum_rows(data_dir, from, to)?;
    let mut written = 0;
    for (key, sums) in &rows {
        emit(&Line::of(key, sums).values())?;
        written += 1;
    }
    Ok(written)
}

/// The usage columns a statement reads.
const USAGE_COLUMNS: [&str; 20] = [
    "ts",
    "org",
    "provider",
    "model",
    "allocation",
    "team",
    "project",
    "cost_center",
    "currency",
    "rate_card_version",
    "cost",
    "list_cost",
    "tokens_in",
    "tokens_out",
    "kind",
    "unit",
    "quantity",
    "cluster",
    "partition",
    "instance_type",
];

/// The sums of the events with `from <= ts < to` that have an allocation, by statement row.
fn sum_rows(
    data_dir: &Path,
    from: Option<UnixMs>,
    to: Option<UnixMs>,
) -> Result<BTreeMap<Key, Sums>, ColumnarError> {
    let mut rows: BTreeMap<Key, Sums> = BTreeMap::new();
    crate::rollup::for_each_batch(data_dir, &USAGE_COLUMNS, |batch, written| {
        let columns = UsageColumns::of(&batch)?;
        for i in 0..batch.num_rows() {
            let t = UnixMs(columns.ts.value(i));
            if from.is_some_and(|f| t < f)
                || to.is_some_and(|e| t >= e)
                || columns.allocation.is_null(i)
            {
                continue;
            }
            rows.entry(columns.key(i, t, written))
                .or_default()
                .add(&columns, i);
        }
        Ok(())
    })?;
    Ok(rows)
}

/// The columns of one batch of usage a statement reads, typed.
struct UsageColumns<'a> {
    ts: &'a TimestampMillisecondArray,
    cost: &'a Decimal128Array,
    list_cost: &'a Decimal128Array,
    tokens_in: &'a Int64Array,
    tokens_out: &'a Int64Array,
    quantity: &'a Decimal128Array,
    kind: &'a StringArray,
    unit: &'a StringArray,
    cluster: &'a StringArray,
    partition: &'a StringArray,
    /// `None` in files written before the column existed: read as empty.
    instance_type: Option<&'a StringArray>,
    org: &'a StringArray,
    provider: &'a StringArray,
    model: &'a StringArray,
    allocation: &'a StringArray,
    team: &'a StringArray,
    project: &'a StringArray,
    cost_center: &'a StringArray,
    currency: &'a StringArray,
    version: &'a StringArray,
}

impl<'a> UsageColumns<'a> {
    /// The batch's columns, or the first one missing.
    fn of(batch: &'a RecordBatch) -> Result<UsageColumns<'a>, ColumnarError> {
        let missing = |name: &str| ColumnarError::Encode(format!("column `{name}` missing"));
        let ts = batch
            .column_by_name("ts")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
            .ok_or_else(|| missing("ts"))?;
        let decimals = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<Decimal128Array>())
                .ok_or_else(|| missing(name))
        };
        let ints = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                .ok_or_else(|| missing(name))
        };
        let text = |name: &str| strings(batch, name);
        Ok(UsageColumns {
            ts,
            cost: decimals("cost")?,
            list_cost: decimals("list_cost")?,
            tokens_in: ints("tokens_in")?,
            tokens_out: ints("tokens_out")?,
            quantity: decimals("quantity")?,
            kind: text("kind")?,
            unit: text("unit")?,
            cluster: text("cluster")?,
            partition: text("partition")?,
            instance_type: text("instance_type").ok(),
            org: text("org")?,
            provider: text("provider")?,
            model: text("model")?,
            allocation: text("allocation")?,
            team: text("team")?,
            project: text("project")?,
            cost_center: text("cost_center")?,
            currency: text("currency")?,
            version: text("rate_card_version")?,
        })
    }

    /// The statement row event `i`, of instant `t`, in a file written at `written`, falls in.
    fn key(&self, i: usize, t: UnixMs, written: Option<UnixMs>) -> Key {
        Key {
            hour: t.0.div_euclid(HOUR_MS),
            corrected_in: written.and_then(|w| correction_month(t, w)),
            kind: text(self.kind, i),
            unit: text(self.unit, i),
            cluster: text(self.cluster, i),
            partition: text(self.partition, i),
            instance_type: self.instance_type.map(|a| text(a, i)).unwrap_or_default(),
            org: text(self.org, i),
            provider: text(self.provider, i),
            model: text(self.model, i),
            allocation: text(self.allocation, i),
            team: text(self.team, i),
            project: text(self.project, i),
            cost_center: text(self.cost_center, i),
            currency: text(self.currency, i),
            rate_card_version: text(self.version, i),
        }
    }
}

impl Sums {
    /// Adds event `i` of `columns`.
    fn add(&mut self, columns: &UsageColumns<'_>, i: usize) {
        if !columns.quantity.is_null(i) {
            self.quantity_micros += columns.quantity.value(i);
        }
        self.cost += columns.cost.value(i);
        self.list_cost += columns.list_cost.value(i);
        self.tokens_in += columns.tokens_in.value(i);
        self.tokens_out += columns.tokens_out.value(i);
        self.events += 1;
    }
}

/// What a row charges for, in FOCUS's terms: a model's tokens, or a unit of compute or storage
/// at a site.
struct Charge {
    sku: String,
    description: String,
    /// The consumed and pricing quantity, as FOCUS writes it.
    amount: String,
    unit: &'static str,
    category: &'static str,
    provider: String,
    service: String,
}

impl Charge {
    /// A resource row: its SKU is the site and unit, its provider the cluster (or the account).
    fn resource(key: &Key, sums: &Sums, account: &str) -> Charge {
        let place: Vec<&str> = [&key.cluster, &key.partition, &key.instance_type]
            .into_iter()
            .map(String::as_str)
            .filter(|p| !p.is_empty())
            .collect();
        let site = if place.is_empty() {
            account.to_owned()
        } else {
            place.join("/")
        };
        let provider = if key.cluster.is_empty() {
            account.to_owned()
        } else {
            key.cluster.clone()
        };
        let (category, service) = if key.kind == "storage" {
            ("Storage", format!("{provider} storage"))
        } else {
            ("Compute", format!("{provider} compute"))
        };
        Charge {
            sku: format!("{site}/{}", key.unit),
            description: format!("{} on {site} for {}", key.unit, key.allocation),
            amount: quantity(sums.quantity_micros),
            unit: focus_unit(&key.unit),
            category,
            provider,
            service,
        }
    }

    /// A model-call row: its SKU is the provider's model, counted in tokens.
    fn tokens(key: &Key, sums: &Sums) -> Charge {
        let sku = format!("{}/{}", key.provider, key.model);
        let tokens = sums.tokens_in + sums.tokens_out;
        Charge {
            description: format!("{sku} tokens for {}", key.allocation),
            sku,
            amount: format!("{tokens}.0"),
            unit: "Tokens",
            category: "AI and Machine Learning",
            provider: key.provider.clone(),
            service: key.provider.clone(),
        }
    }
}

/// One statement row: its key and sums, with its periods, account and charge worked out.
struct Line<'a> {
    key: &'a Key,
    sums: &'a Sums,
    /// The charge period: the usage's hour.
    start: UnixMs,
    end: UnixMs,
    /// The billing period: the usage's month, or for a correction the month it arrived.
    billing_start: UnixMs,
    billing_end: UnixMs,
    account: &'a str,
    charge: Charge,
}

/// Columns FOCUS defines, the first of [`COLUMNS`]; ours (`x_`) follow.
const FOCUS_DEFINED_COLUMNS: usize = 44;
/// Our own columns, the last of [`COLUMNS`].
const EXTENSION_COLUMNS: usize = 13;
const _: () = assert!(FOCUS_DEFINED_COLUMNS + EXTENSION_COLUMNS == COLUMNS.len());

impl<'a> Line<'a> {
    fn of(key: &'a Key, sums: &'a Sums) -> Line<'a> {
        let start = UnixMs(key.hour * HOUR_MS);
        let end = UnixMs((key.hour + 1) * HOUR_MS);
        // A correction keeps its usage's charge period and is billed in the period it arrived.
        let month = key
            .corrected_in
            .unwrap_or_else(|| Period::Month.index(start));
        let account = if key.org.is_empty() {
            "tollgate"
        } else {
            &key.org
        };
        let charge = if key.kind == "tokens" {
            Charge::tokens(key, sums)
        } else {
            Charge::resource(key, sums, account)
        };
        Line {
            key,
            sums,
            start,
            end,
            billing_start: Period::Month.start(month).unwrap_or(start),
            billing_end: Period::Month.end(month).unwrap_or(end),
            account,
            charge,
        }
    }

    /// The row's values, in [`COLUMNS`] order.
    fn values(self) -> Vec<String> {
        let ours = self.extension_values();
        let mut values = Vec::with_capacity(COLUMNS.len());
        values.extend(self.focus_values());
        values.extend(ours);
        values
    }

    /// The values of the columns FOCUS defines, `AvailabilityZone` to `Tags`.
    fn focus_values(self) -> [String; FOCUS_DEFINED_COLUMNS] {
        let (key, sums, charge) = (self.key, self.sums, self.charge);
        let account = self.account;
        let tags = serde_json::json!({
            "team": key.team, "project": key.project, "allocation": key.allocation,
            "cost_center": key.cost_center,
        })
        .to_string();
        let class = if key.corrected_in.is_some() {
            "Correction"
        } else {
            ""
        };
        let none = String::new;
        [
            none(),
            decimal(sums.cost),
            account.to_owned(),
            account.to_owned(),
            key.currency.clone(),
            iso(self.billing_end),
            iso(self.billing_start),
            "Usage".into(),
            class.into(),
            charge.description,
            "Usage-Based".into(),
            iso(self.end),
            iso(self.start),
            "Usage".into(),
            none(),
            none(),
            none(),
            none(),
            none(),
            charge.amount.clone(),
            charge.unit.into(),
            decimal(sums.cost),
            none(),
            decimal(sums.cost),
            "tollgate".into(),
            decimal(sums.list_cost),
            none(),
            "Standard".into(),
            charge.amount,
            charge.unit.into(),
            charge.provider.clone(),
            charge.provider,
            none(),
            none(),
            none(),
            none(),
            none(),
            charge.category.into(),
            charge.service,
            charge.sku.clone(),
            format!("{}@{}", charge.sku, key.rate_card_version),
            key.allocation.clone(),
            key.allocation.clone(),
            tags,
        ]
    }

    /// The values of our own columns, `x_Team` to `x_InstanceType`.
    fn extension_values(&self) -> [String; EXTENSION_COLUMNS] {
        let (key, sums) = (self.key, self.sums);
        [
            key.team.clone(),
            key.project.clone(),
            key.cost_center.clone(),
            key.model.clone(),
            key.rate_card_version.clone(),
            sums.tokens_in.to_string(),
            sums.tokens_out.to_string(),
            sums.events.to_string(),
            FOCUS_VERSION.into(),
            key.kind.clone(),
            key.cluster.clone(),
            key.partition.clone(),
            key.instance_type.clone(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_scaled_exactly() {
        assert_eq!(parse_scaled("12.5", 9), Some(12_500_000_000));
        assert_eq!(parse_scaled("0.000000001", 9), Some(1));
        assert_eq!(parse_scaled("-2", 6), Some(-2_000_000));
        assert_eq!(parse_scaled("7.0", 6), Some(7_000_000));
        for bad in ["", "1.0000001", "1e3", "one", ".5", "1.2.3"] {
            assert_eq!(parse_scaled(bad, 6), None, "{bad}");
        }
    }
    use tollgate_engine::{EventKind, Micros, Nanos, ResourceUnit, UsageEvent};

    #[test]
    fn events_arriving_after_their_period_closed_are_corrections_billed_when_they_arrived() {
        let root =
            std::env::temp_dir().join(format!("tollgate-corrections-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let at = |text: &str| tollgate_engine::time::parse_rfc3339(text).unwrap();
        let event = |ts: &str, cost: u64| {
            let mut event = UsageEvent::sample();
            event.ts_ms = at(ts);
            event.cost_nanos = Nanos(cost);
            event
        };
        // October usage: written in October, within the hour of grace, and well after.
        for (name, ts, cost, written) in [
            ("on-time", "2026-10-20T10:15:00Z", 1, "2026-10-20T10:16:00Z"),
            ("grace", "2026-10-31T23:50:00Z", 2, "2026-11-01T00:30:00Z"),
            ("late", "2026-10-20T10:20:00Z", 4, "2026-11-10T08:00:00Z"),
        ] {
            crate::columnar::write_file_at(
                &root.join(format!("usage/{name}.parquet")),
                &[event(ts, cost)],
                at(written),
            )
            .unwrap();
        }
        let mut out = Vec::new();
        export_csv(&root, None, None, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let column = |row: &str, name: &str| {
            let at = COLUMNS.iter().position(|c| *c == name).unwrap();
            split(row)[at].clone()
        };
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(rows.len(), 3, "{text}");
        let row = |charge_start: &str, class: &str| {
            *rows
                .iter()
                .find(|r| {
                    column(r, "ChargePeriodStart") == charge_start
                        && column(r, "ChargeClass") == class
                })
                .unwrap_or_else(|| panic!("no {charge_start} {class:?} row in {text}"))
        };
        // The on-time hour folds the on-time event only; the late one is a row of its own.
        let on_time = row("2026-10-20T10:00:00Z", "");
        assert_eq!(column(on_time, "BilledCost"), "0.000000001");
        assert_eq!(
            column(on_time, "BillingPeriodStart"),
            "2026-10-01T00:00:00Z"
        );
        let grace = row("2026-10-31T23:00:00Z", "");
        assert_eq!(column(grace, "BillingPeriodStart"), "2026-10-01T00:00:00Z");
        let late = row("2026-10-20T10:00:00Z", "Correction");
        assert_eq!(column(late, "BilledCost"), "0.000000004");
        assert_eq!(column(late, "BillingPeriodStart"), "2026-11-01T00:00:00Z");
        assert_eq!(column(late, "BillingPeriodEnd"), "2026-12-01T00:00:00Z");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn tokens_compute_and_storage_are_rows_of_their_own_categories() {
        let root = std::env::temp_dir().join(format!("tollgate-focus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let token = UsageEvent::sample();
        let mut gpu = UsageEvent::sample();
        gpu.kind = EventKind::Compute;
        gpu.provider = None;
        gpu.model = None;
        gpu.unit = Some(ResourceUnit::GpuHour);
        gpu.quantity_micros = Some(Micros(12_345_675));
        gpu.cost_nanos = Nanos(24_691_350_000);
        let mut gpu_again = gpu.clone();
        gpu_again.quantity_micros = Some(Micros(1));
        gpu_again.cost_nanos = Nanos(2_000);
        let mut disk = gpu.clone();
        disk.kind = EventKind::Storage;
        disk.unit = Some(ResourceUnit::GbMonth);
        disk.cluster = Some("lustre1".into());
        disk.partition = None;
        disk.instance_type = None;
        disk.quantity_micros = Some(Micros(80_000_000));
        crate::columnar::write_file(
            &root.join("usage/part.parquet"),
            &[token, gpu, gpu_again, disk],
        )
        .unwrap();
        let mut out = Vec::new();
        assert_eq!(export_csv(&root, None, None, &mut out).unwrap(), 3);
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(header, COLUMNS);
        let column = |row: &str, name: &str| {
            // Tags hold commas inside quotes; they come after every column read here but one.
            let at = COLUMNS.iter().position(|c| *c == name).unwrap();
            let fields: Vec<String> = split(row);
            fields[at].clone()
        };
        let rows: Vec<&str> = lines.collect();
        let by_category = |category: &str| {
            *rows
                .iter()
                .find(|r| column(r, "ServiceCategory") == category)
                .unwrap()
        };
        let compute = by_category("Compute");
        assert_eq!(column(compute, "ConsumedQuantity"), "12.345676");
        assert_eq!(column(compute, "ConsumedUnit"), "GPU-Hours");
        assert_eq!(column(compute, "PricingUnit"), "GPU-Hours");
        assert_eq!(column(compute, "BilledCost"), "24.691352000");
        assert_eq!(column(compute, "SkuId"), "hpc1/a100/gpu-a100-8x/gpu_hour");
        assert_eq!(column(compute, "Provider"), "hpc1");
        assert_eq!(column(compute, "x_Events"), "2");
        let storage = by_category("Storage");
        assert_eq!(column(storage, "ConsumedQuantity"), "80.000000");
        assert_eq!(column(storage, "ConsumedUnit"), "GB-Months");
        assert_eq!(column(storage, "x_Cluster"), "lustre1");
        let tokens = by_category("AI and Machine Learning");
        assert_eq!(column(tokens, "ConsumedUnit"), "Tokens");
        assert_eq!(column(tokens, "ConsumedQuantity"), "12800.0");
        std::fs::remove_dir_all(root).unwrap();
    }

    /// Splits one CSV row written by `csv_field`.
    fn split(row: &str) -> Vec<String> {
        let mut fields = vec![String::new()];
        let mut quoted = false;
        let mut chars = row.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    chars.next();
                    fields.last_mut().unwrap().push('"');
                }
                ('"', _) => quoted = !quoted,
                (',', false) => fields.push(String::new()),
                (c, _) => fields.last_mut().unwrap().push(c),
            }
        }
        fields
    }
}
