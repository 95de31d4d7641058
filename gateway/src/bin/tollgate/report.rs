//! `tollgate report`: chargeback from the Parquet files, totals grouped by one dimension, as a
//! table, CSV, JSON or Parquet, or as a FinOps FOCUS statement (CSV or Parquet).
//!
//! It reads only the data folder, never a running gateway. The window is `--from` inclusive to
//! `--to` exclusive, and every amount is printed as an exact decimal of the integers summed.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use tollgate_engine::UnixMs;
use tollgate_engine::time::parse_rfc3339;
use tollgate_sink::rollup::{self, Dimension, Row};

use tollgate_gateway::control::spend::{self, COLUMNS, cells, key};

use crate::print;

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
        "json" => print::json(&spend::report_json(by, from, to, &rows)),
        "csv" => {
            let mut out = std::io::stdout().lock();
            spend::write_csv(by, &rows, &mut out)?;
            Ok(out.flush()?)
        }
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
        format!("--by {by}: choose team, project, allocation, user, agent, model, provider, cost_center, kind, unit, cluster or partition")
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
