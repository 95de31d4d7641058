//! The chargeback statement in the FinOps FOCUS format (version 1.0), so FinOps tools take it as
//! they take a cloud bill.
//!
//! One row per hour, provider, model, allocation and rate-card version: `BilledCost`,
//! `EffectiveCost` and `ContractedCost` are what budgets were charged, `ListCost` the list price,
//! charge periods are the hour (start inclusive, end exclusive, UTC), billing periods the month.
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
];

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    hour: i64,
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
    ];
    let mut rows: BTreeMap<Key, Sums> = BTreeMap::new();
    crate::rollup::for_each_batch(data_dir, &wanted, |batch| {
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
            sums.cost += cost.value(i);
            sums.list_cost += list_cost.value(i);
            sums.tokens_in += tokens_in.value(i);
            sums.tokens_out += tokens_out.value(i);
            sums.events += 1;
        }
        Ok(())
    })?;
    let io = |source| ColumnarError::Io {
        path: "(output)".into(),
        source,
    };
    writeln!(out, "{}", COLUMNS.join(",")).map_err(io)?;
    let mut written = 0;
    for (key, sums) in &rows {
        let start = UnixMs(key.hour * HOUR_MS);
        let end = UnixMs((key.hour + 1) * HOUR_MS);
        let month = Period::Month.index(start);
        let billing_start = Period::Month.start(month).unwrap_or(start);
        let billing_end = Period::Month.end(month).unwrap_or(end);
        let account = if key.org.is_empty() {
            "tollgate"
        } else {
            &key.org
        };
        let sku = format!("{}/{}", key.provider, key.model);
        let tokens = sums.tokens_in + sums.tokens_out;
        let quantity = format!("{tokens}.0");
        let tags = serde_json::json!({
            "team": key.team, "project": key.project, "allocation": key.allocation,
            "cost_center": key.cost_center,
        })
        .to_string();
        let values: [String; 53] = [
            String::new(),
            decimal(sums.cost),
            account.to_owned(),
            account.to_owned(),
            key.currency.clone(),
            iso(billing_end),
            iso(billing_start),
            "Usage".into(),
            String::new(),
            format!("{sku} tokens for {}", key.allocation),
            "Usage-Based".into(),
            iso(end),
            iso(start),
            "Usage".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            quantity.clone(),
            "Tokens".into(),
            decimal(sums.cost),
            String::new(),
            decimal(sums.cost),
            "tollgate".into(),
            decimal(sums.list_cost),
            String::new(),
            "Standard".into(),
            quantity,
            "Tokens".into(),
            key.provider.clone(),
            key.provider.clone(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            "AI and Machine Learning".into(),
            key.provider.clone(),
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
        ];
        let mut line = String::new();
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            csv_field(&mut line, value);
        }
        let _ = writeln!(line);
        out.write_all(line.as_bytes()).map_err(io)?;
        written += 1;
    }
    Ok(written)
}
