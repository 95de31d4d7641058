//! `tollgate report`: chargeback from the Parquet files, totals grouped by one dimension, as a
//! table, CSV, JSON or Parquet, or as a FinOps FOCUS statement (CSV or Parquet).
//!
//! It reads only the data folder, never a running gateway. The window is `--from` inclusive to
//! `--to` exclusive, and every amount is printed as an exact decimal of the integers summed.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde_json::{Value, json};
use tollgate_engine::UnixMs;
use tollgate_engine::time::parse_rfc3339;
use tollgate_sink::rollup::{self, Dimension, Row};

use crate::print::{self, decimal, quantity};

/// The columns after the group's own: tokens, compute and storage side by side, each with its
/// cost, after the events and the billed and list costs.
const COLUMNS: [&str; 12] = [
    "events",
    "cost",
    "list_cost",
    "tokens_in",
    "tokens_out",
    "token_cost",
    "gpu_hours",
    "core_hours",
    "node_hours",
    "compute_cost",
    "gb_months",
    "storage_cost",
];

/// Makes the report in `format`: `parquet` and `focus-parquet` write the file `output`, every
/// other format prints to stdout and refuses an `output`.
pub fn run(
    data: &Path,
    from: Option<&str>,
    to: Option<&str>,
    by: &str,
    format: &str,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    match format {
        "focus-parquet" => focus_parquet(data, from, to, output),
        "parquet" => rollup_parquet(data, from, to, by, output),
        _ => {
            anyhow::ensure!(
                output.is_none(),
                "--output is for --format parquet and focus-parquet; other formats print to stdout"
            );
            print(data, from, to, by, format)
        }
    }
}

/// Prints the report as `table`, `csv`, `json` or `focus` (the FOCUS CSV: its rows are per
/// hour, model and allocation, so `by` is checked but not used).
pub fn print(
    data: &Path,
    from: Option<&str>,
    to: Option<&str>,
    by: &str,
    format: &str,
) -> anyhow::Result<()> {
    let dimension = dimension(by)?;
    let (from_ms, to_ms) = window(from, to)?;
    if format == "focus" {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        tollgate_sink::focus::export_csv(data, from_ms, to_ms, &mut out)?;
        out.flush()?;
        return Ok(());
    }
    let rows = rollup::report(data, from_ms, to_ms, dimension)?;
    let total = rows.iter().fold(Row::default(), |mut t, r| {
        t.add(r);
        t
    });
    let currency = total.currency.clone().unwrap_or_default();
    match format {
        "json" => print::json(&json!({
            "by": by, "from": from, "to": to, "currency": currency,
            "rows": rows.iter().map(|r| json_row(by, r, json!(r.key))).collect::<Vec<_>>(),
            "total": json_row(by, &total, Value::Null),
        })),
        "csv" => print_csv(by, &rows),
        "table" => print_table(by, &currency, &rows, &total),
        other => anyhow::bail!("--format {other}: choose table, csv, json or focus"),
    }
}

/// The rows as a Parquet file at `output`, with exact decimals.
fn rollup_parquet(
    data: &Path,
    from: Option<&str>,
    to: Option<&str>,
    by: &str,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let output = output.context("--format parquet writes a file: pass --output FILE")?;
    let dimension = dimension(by)?;
    let window = window(from, to)?;
    let rows = rollup::report(data, window.0, window.1, dimension)?;
    rollup::write_parquet(&rows, dimension, window, output)?;
    writeln!(
        std::io::stdout().lock(),
        "{} rows by {by} written to {}",
        rows.len(),
        output.display()
    )?;
    Ok(())
}

/// The FOCUS statement as a Parquet file at `output`, the FOCUS version in its metadata.
fn focus_parquet(
    data: &Path,
    from: Option<&str>,
    to: Option<&str>,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let output = output.context("--format focus-parquet writes a file: pass --output FILE")?;
    let (from, to) = window(from, to)?;
    let rows = tollgate_sink::focus::export_parquet(data, from, to, output)?;
    writeln!(
        std::io::stdout().lock(),
        "{rows} FOCUS {} rows written to {}",
        tollgate_sink::focus::FOCUS_VERSION,
        output.display()
    )?;
    Ok(())
}

/// `--by` as a dimension, or the list of those there are.
fn dimension(by: &str) -> anyhow::Result<Dimension> {
    Dimension::parse(by).with_context(|| {
        format!("--by {by}: choose team, project, allocation, user, model, provider, cost_center, kind, unit, cluster or partition")
    })
}

/// `--from` and `--to` as instants, an error naming the flag.
pub fn window(
    from: Option<&str>,
    to: Option<&str>,
) -> anyhow::Result<(Option<UnixMs>, Option<UnixMs>)> {
    let instant = |text: Option<&str>, flag: &str| {
        text.map(|t| {
            parse_rfc3339(t)
                .map_err(anyhow::Error::msg)
                .with_context(|| flag.to_owned())
        })
        .transpose()
    };
    Ok((instant(from, "--from")?, instant(to, "--to")?))
}

/// A row's group, `(none)` for events without one.
fn key(r: &Row) -> String {
    r.key.clone().unwrap_or_else(|| "(none)".to_owned())
}

/// A row's cells in [`COLUMNS`] order.
fn cells(r: &Row) -> Vec<String> {
    vec![
        r.events.to_string(),
        decimal(r.cost_nanos),
        decimal(r.list_cost_nanos),
        r.tokens_in.to_string(),
        r.tokens_out.to_string(),
        decimal(r.token_cost_nanos),
        quantity(r.gpu_hour_micros),
        quantity(r.core_hour_micros),
        quantity(r.node_hour_micros),
        decimal(r.compute_cost_nanos),
        quantity(r.gb_month_micros),
        decimal(r.storage_cost_nanos),
    ]
}

/// A row as JSON: its group under the dimension's name, and the cost also as exact nano-units.
fn json_row(by: &str, r: &Row, key: Value) -> Value {
    json!({
        by: key, "events": r.events,
        "cost": decimal(r.cost_nanos), "cost_nanos": r.cost_nanos.to_string(),
        "list_cost": decimal(r.list_cost_nanos),
        "tokens_in": r.tokens_in, "tokens_out": r.tokens_out,
        "token_cost": decimal(r.token_cost_nanos),
        "gpu_hours": quantity(r.gpu_hour_micros),
        "core_hours": quantity(r.core_hour_micros),
        "node_hours": quantity(r.node_hour_micros),
        "compute_cost": decimal(r.compute_cost_nanos),
        "gb_months": quantity(r.gb_month_micros),
        "storage_cost": decimal(r.storage_cost_nanos),
    })
}

/// The rows as CSV without a total, a group with a comma or quote quoted as RFC 4180 does.
fn print_csv(by: &str, rows: &[Row]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{by},{}", COLUMNS.join(","))?;
    for r in rows {
        let k = key(r);
        let k = if k.contains([',', '"']) {
            format!("\"{}\"", k.replace('"', "\"\""))
        } else {
            k
        };
        writeln!(out, "{k},{}", cells(r).join(","))?;
    }
    Ok(())
}

/// The currency, then the rows and a TOTAL row as an aligned table.
fn print_table(by: &str, currency: &str, rows: &[Row], total: &Row) -> anyhow::Result<()> {
    let mut table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| [vec![key(r)], cells(r)].concat())
        .collect();
    table.push([vec!["TOTAL".to_owned()], cells(total)].concat());
    if !currency.is_empty() {
        writeln!(std::io::stdout().lock(), "currency {currency}")?;
    }
    let columns: Vec<&str> = [by].into_iter().chain(COLUMNS).collect();
    print::table(&columns, &table)
}
