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

use arrow_array::{
    Array, Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use tollgate_engine::UnixMs;
use tollgate_engine::time::Period;

use crate::columnar::ColumnarError;

/// The FOCUS version written.
pub const FOCUS_VERSION: &str = "1.0";

/// The columns, in order.
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
/// Instants (UTC).
const TIME_COLUMNS: [&str; 4] = [
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargePeriodEnd",
    "ChargePeriodStart",
];
/// Counts.
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
    use arrow_array::ArrayRef;
    use arrow_schema::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;
    let mut columns: Vec<Vec<String>> = vec![Vec::new(); COLUMNS.len()];
    let rows = statement(data_dir, from, to, |values| {
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value.clone());
        }
        Ok(())
    })?;
    let bad = |name: &str, value: &str| {
        ColumnarError::Encode(format!(
            "FOCUS column {name}: `{value}` is not what it should be"
        ))
    };
    let mut fields = Vec::with_capacity(COLUMNS.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(COLUMNS.len());
    for (name, values) in COLUMNS.iter().zip(&columns) {
        let scaled = |scale: u32| -> Result<Vec<Option<i128>>, ColumnarError> {
            values
                .iter()
                .map(|v| {
                    if v.is_empty() {
                        Ok(None)
                    } else {
                        parse_scaled(v, scale).map(Some).ok_or_else(|| bad(name, v))
                    }
                })
                .collect()
        };
        let (field, array): (Field, ArrayRef) = if MONEY_COLUMNS.contains(name) {
            let array = Decimal128Array::from(scaled(9)?)
                .with_precision_and_scale(38, 9)
                .map_err(|e| ColumnarError::Encode(e.to_string()))?;
            (
                Field::new(*name, DataType::Decimal128(38, 9), true),
                Arc::new(array),
            )
        } else if QUANTITY_COLUMNS.contains(name) {
            let array = Decimal128Array::from(scaled(6)?)
                .with_precision_and_scale(38, 6)
                .map_err(|e| ColumnarError::Encode(e.to_string()))?;
            (
                Field::new(*name, DataType::Decimal128(38, 6), true),
                Arc::new(array),
            )
        } else if TIME_COLUMNS.contains(name) {
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
            (Field::new(*name, ty, false), Arc::new(array))
        } else if COUNT_COLUMNS.contains(name) {
            let counts: Result<Vec<i64>, ColumnarError> = values
                .iter()
                .map(|v| v.parse().map_err(|_| bad(name, v)))
                .collect();
            (
                Field::new(*name, DataType::Int64, false),
                Arc::new(Int64Array::from(counts?)),
            )
        } else {
            let texts: Vec<Option<&str>> = values
                .iter()
                .map(|v| (!v.is_empty()).then_some(v.as_str()))
                .collect();
            (
                Field::new(*name, DataType::Utf8, true),
                Arc::new(StringArray::from(texts)),
            )
        };
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
    let wanted = [
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
    let mut rows: BTreeMap<Key, Sums> = BTreeMap::new();
    crate::rollup::for_each_batch(data_dir, &wanted, |batch, written| {
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
        let (cost, list_cost) = (decimals("cost")?, decimals("list_cost")?);
        let (tokens_in, tokens_out) = (ints("tokens_in")?, ints("tokens_out")?);
        let quantities = decimals("quantity")?;
        let [kind, unit, cluster, partition] =
            ["kind", "unit", "cluster", "partition"].map(|name| strings(&batch, name));
        let (kind, unit, cluster, partition) = (kind?, unit?, cluster?, partition?);
        // Files written before the column existed have none: read as empty.
        let instance_type = strings(&batch, "instance_type").ok();
        let [
            org,
            provider,
            model,
            allocation,
            team,
            project,
            cost_center,
            currency,
            version,
        ] = [
            "org",
            "provider",
            "model",
            "allocation",
            "team",
            "project",
            "cost_center",
            "currency",
            "rate_card_version",
        ]
        .map(|name| strings(&batch, name));
        let (org, provider, model, allocation, team, project, cost_center, currency, version) = (
            org?,
            provider?,
            model?,
            allocation?,
            team?,
            project?,
            cost_center?,
            currency?,
            version?,
        );
        for i in 0..batch.num_rows() {
            let t = UnixMs(ts.value(i));
            if from.is_some_and(|f| t < f) || to.is_some_and(|e| t >= e) || allocation.is_null(i) {
                continue;
            }
            let key = Key {
                hour: t.0.div_euclid(HOUR_MS),
                corrected_in: written.and_then(|w| correction_month(t, w)),
                kind: text(kind, i),
                unit: text(unit, i),
                cluster: text(cluster, i),
                partition: text(partition, i),
                instance_type: instance_type.map(|a| text(a, i)).unwrap_or_default(),
                org: text(org, i),
                provider: text(provider, i),
                model: text(model, i),
                allocation: text(allocation, i),
                team: text(team, i),
                project: text(project, i),
                cost_center: text(cost_center, i),
                currency: text(currency, i),
                rate_card_version: text(version, i),
            };
            let sums = rows.entry(key).or_default();
            if !quantities.is_null(i) {
                sums.quantity_micros += quantities.value(i);
            }
            sums.cost += cost.value(i);
            sums.list_cost += list_cost.value(i);
            sums.tokens_in += tokens_in.value(i);
            sums.tokens_out += tokens_out.value(i);
            sums.events += 1;
        }
        Ok(())
    })?;
    let mut written = 0;
    for (key, sums) in &rows {
        let start = UnixMs(key.hour * HOUR_MS);
        let end = UnixMs((key.hour + 1) * HOUR_MS);
        // A correction keeps its usage's charge period and is billed in the period it arrived.
        let month = key
            .corrected_in
            .unwrap_or_else(|| Period::Month.index(start));
        let billing_start = Period::Month.start(month).unwrap_or(start);
        let billing_end = Period::Month.end(month).unwrap_or(end);
        let account = if key.org.is_empty() {
            "tollgate"
        } else {
            &key.org
        };
        let tags = serde_json::json!({
            "team": key.team, "project": key.project, "allocation": key.allocation,
            "cost_center": key.cost_center,
        })
        .to_string();
        let resource = key.kind != "tokens";
        // What the row is, in FOCUS's terms: a model's tokens, or a unit of compute or storage
        // at a site.
        let (sku, description, amount, unit, category, provider, service) = if resource {
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
            (
                format!("{site}/{}", key.unit),
                format!("{} on {site} for {}", key.unit, key.allocation),
                quantity(sums.quantity_micros),
                focus_unit(&key.unit),
                category,
                provider,
                service,
            )
        } else {
            let sku = format!("{}/{}", key.provider, key.model);
            let tokens = sums.tokens_in + sums.tokens_out;
            (
                sku.clone(),
                format!("{sku} tokens for {}", key.allocation),
                format!("{tokens}.0"),
                "Tokens",
                "AI and Machine Learning",
                key.provider.clone(),
                key.provider.clone(),
            )
        };
        let values: [String; 57] = [
            String::new(),
            decimal(sums.cost),
            account.to_owned(),
            account.to_owned(),
            key.currency.clone(),
            iso(billing_end),
            iso(billing_start),
            "Usage".into(),
            if key.corrected_in.is_some() {
                "Correction".into()
            } else {
                String::new()
            },
            description,
            "Usage-Based".into(),
            iso(end),
            iso(start),
            "Usage".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            amount.clone(),
            unit.into(),
            decimal(sums.cost),
            String::new(),
            decimal(sums.cost),
            "tollgate".into(),
            decimal(sums.list_cost),
            String::new(),
            "Standard".into(),
            amount,
            unit.into(),
            provider.clone(),
            provider,
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            category.into(),
            service,
            sku.clone(),
            format!("{sku}@{}", key.rate_card_version),
            key.allocation.clone(),
            key.allocation.clone(),
            tags,
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
        ];
        emit(&values)?;
        written += 1;
    }
    Ok(written)
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
