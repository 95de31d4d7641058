//! What was spent, read back for the admin API and the console: chargeback totals and spend
//! over time from the Parquet files (the rollups `tollgate report` makes, in the same JSON),
//! the latest usage events from this replica's log, and the exports (chargeback CSV, FOCUS
//! CSV and Parquet) streamed as they are made.
//!
//! **Invariant:** every amount is an exact decimal of the integers the files hold, written
//! digit by digit: the console and the CLI show one number for one spend.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use tollgate_engine::UnixMs;
use tollgate_engine::time::{format_rfc3339_s, parse_rfc3339};
use tollgate_sink::columnar::ColumnarError;
use tollgate_sink::rollup::{self, Dimension, Only, Row};

use crate::control::Control;
use crate::http::error::Failure;
use crate::http::response::ChannelSender;
use crate::limits::CONSOLE_TAIL_EVENTS_MAX;
use crate::state::Gateway;

/// The columns after the group's own: tokens, compute and storage side by side, each with its
/// cost, after the events and the billed and list costs.
pub const COLUMNS: [&str; 12] = [
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

/// An exact decimal of nano-units, with at least two places and no trailing zeros past them:
/// `12.50`, `0.000000001`, `-3.25`.
#[must_use]
pub fn decimal(nanos: i128) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let magnitude = nanos.unsigned_abs();
    let whole = magnitude / 1_000_000_000;
    let frac = format!("{:09}", magnitude % 1_000_000_000);
    let frac = frac.trim_end_matches('0');
    let frac = if frac.len() < 2 {
        &format!("{frac:0<2}")
    } else {
        frac
    };
    format!("{sign}{whole}.{frac}")
}

/// An exact decimal of micro-units, with no trailing zeros (and no point for a whole number):
/// `16.5`, `0.000278`, `0`.
#[must_use]
pub fn quantity(micros: i128) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let magnitude = micros.unsigned_abs();
    let frac = magnitude % 1_000_000;
    if frac == 0 {
        return format!("{sign}{}", magnitude / 1_000_000);
    }
    let digits = format!("{frac:06}");
    format!(
        "{sign}{}.{}",
        magnitude / 1_000_000,
        digits.trim_end_matches('0')
    )
}

/// A row's group, `(none)` for events without one.
#[must_use]
pub fn key(r: &Row) -> String {
    r.key.clone().unwrap_or_else(|| "(none)".to_owned())
}

/// A row's cells in [`COLUMNS`] order.
#[must_use]
pub fn cells(r: &Row) -> Vec<String> {
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
#[must_use]
pub fn row_json(by: &str, r: &Row, key: Value) -> Value {
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

/// The report as JSON (`tollgate report --format json` and `GET /admin/v1/report`): the
/// rows, then their total; `from` and `to` as they were asked.
#[must_use]
pub fn report_json(by: &str, from: Option<&str>, to: Option<&str>, rows: &[Row]) -> Value {
    let total = rows.iter().fold(Row::default(), |mut t, r| {
        t.add(r);
        t
    });
    let currency = total.currency.clone().unwrap_or_default();
    json!({
        "by": by, "from": from, "to": to, "currency": currency,
        "rows": rows.iter().map(|r| row_json(by, r, json!(r.key))).collect::<Vec<_>>(),
        "total": row_json(by, &total, Value::Null),
    })
}

/// The rows as CSV without a total, a group with a comma, quote or line break quoted as RFC
/// 4180 does.
pub fn write_csv(by: &str, rows: &[Row], out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{by},{}", COLUMNS.join(","))?;
    for r in rows {
        let k = key(r);
        let k = if k.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", k.replace('"', "\"\""))
        } else {
            k
        };
        writeln!(out, "{k},{}", cells(r).join(","))?;
    }
    Ok(())
}

/// The query of a spend request: a window, a grouping, a filter and a step, each checked.
#[derive(Debug, Default)]
pub struct Query {
    /// `from` as asked (RFC 3339), and as an instant.
    pub from: Option<(String, UnixMs)>,
    /// `to` as asked, and as an instant.
    pub to: Option<(String, UnixMs)>,
    /// `by`: the dimension to group by (default `team`).
    pub by: Option<Dimension>,
    /// `allocation`: only this allocation's events.
    pub allocation: Option<String>,
    /// `step`: `hour` or `day` (default `day`).
    pub step_ms: Option<i64>,
    /// `after`: the live tail's position (a log offset).
    pub after: Option<u64>,
}

/// Longest query string a spend request may have.
const QUERY_BYTES_MAX: usize = 2_048;

impl Query {
    /// Parses a query string (`from=...&to=...`); unknown or repeated fields are refused.
    pub fn parse(query: &str) -> Result<Query, Failure> {
        if query.len() > QUERY_BYTES_MAX {
            return Err(Failure::BadRequest(format!(
                "the query string is over {QUERY_BYTES_MAX} bytes"
            )));
        }
        let mut parsed = Query::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(raw).ok_or_else(|| {
                Failure::BadRequest(format!("query field `{}`: bad escape", clip(name)))
            })?;
            let bad =
                |why: &str| Failure::BadRequest(format!("query field `{}`: {why}", clip(name)));
            let instant = |text: &str| parse_rfc3339(text).map_err(|e| bad(&e.to_string()));
            let repeated = match name {
                "from" => parsed.from.replace((value.clone(), instant(&value)?)).is_some(),
                "to" => parsed.to.replace((value.clone(), instant(&value)?)).is_some(),
                "by" => parsed
                    .by
                    .replace(Dimension::parse(&value).ok_or_else(|| {
                        bad("choose team, project, allocation, user, agent, model, provider, cost_center, kind, unit, cluster or partition")
                    })?)
                    .is_some(),
                "allocation" => parsed.allocation.replace(value).is_some(),
                "step" => parsed
                    .step_ms
                    .replace(match value.as_str() {
                        "hour" => 3_600_000,
                        "day" => 86_400_000,
                        _ => return Err(bad("choose hour or day")),
                    })
                    .is_some(),
                "after" => parsed
                    .after
                    .replace(value.parse().map_err(|_| bad("a log position, a whole number"))?)
                    .is_some(),
                _ => return Err(bad("not a field this request takes")),
            };
            if repeated {
                return Err(bad("given twice"));
            }
        }
        if let (Some((_, from)), Some((_, to))) = (&parsed.from, &parsed.to)
            && to <= from
        {
            return Err(Failure::BadRequest("`to` must be after `from`".to_owned()));
        }
        Ok(parsed)
    }

    fn window(&self) -> (Option<UnixMs>, Option<UnixMs>) {
        (
            self.from.as_ref().map(|(_, t)| *t),
            self.to.as_ref().map(|(_, t)| *t),
        )
    }
}

fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}

/// `%XX` escapes and `+` decoded; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Where the spend is read from: the console's data folder, else the gateway's own Parquet.
fn data_dir(gateway: &Gateway) -> Result<PathBuf, Failure> {
    let config = &gateway.config;
    config
        .console
        .as_ref()
        .map(|c| c.data_dir.clone())
        .or_else(|| config.parquet.as_ref().map(|p| p.dir.clone()))
        .ok_or_else(|| {
            Failure::AdminNotFound(
                "no data folder to read spend from: turn on [parquet] or set console.data_dir"
                    .to_owned(),
            )
        })
}

fn read_failed(e: &ColumnarError) -> Failure {
    Failure::Internal(format!("reading the usage files: {e}"))
}

/// Runs `work` on a blocking thread (it reads files); a panic there is an internal error.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Failure::Internal(format!("reading spend: {e}")))?
}

/// `GET /admin/v1/report?by=&from=&to=`: chargeback totals, as `tollgate report --format json`.
pub async fn report(control: &Control, query: &str) -> Result<Value, Failure> {
    let query = Query::parse(query)?;
    let dir = data_dir(&control.gateway)?;
    let by = query.by.unwrap_or(Dimension::Team);
    let (from, to) = query.window();
    let summaries = Arc::clone(&control.summaries);
    let rows = blocking(move || {
        rollup::report_summarized(&dir, from, to, by, &summaries).map_err(|e| read_failed(&e))
    })
    .await?;
    Ok(report_json(
        by.column(),
        query.from.as_ref().map(|(text, _)| text.as_str()),
        query.to.as_ref().map(|(text, _)| text.as_str()),
        &rows,
    ))
}

/// `GET /admin/v1/series?by=&allocation=&from=&to=&step=`: billed cost per group in each
/// hour or day of the window (`from` and `to` required), each bucket an exact decimal.
pub async fn series(control: &Control, query: &str) -> Result<Value, Failure> {
    let query = Query::parse(query)?;
    let dir = data_dir(&control.gateway)?;
    let summaries = Arc::clone(&control.summaries);
    let (Some((_, from)), Some((_, to))) = (query.from.clone(), query.to.clone()) else {
        return Err(Failure::BadRequest(
            "a series needs `from` and `to`".to_owned(),
        ));
    };
    let by = query.by.unwrap_or(Dimension::Model);
    let step_ms = query.step_ms.unwrap_or(86_400_000);
    let allocation = query.allocation.clone();
    let series = blocking(move || {
        let only = allocation.as_deref().map(|value| Only {
            by: Dimension::Allocation,
            value,
        });
        rollup::series_summarized(&dir, (from, to), step_ms, by, only, &summaries).map_err(|e| {
            match e {
                ColumnarError::Encode(reason) if reason.starts_with("a series") => {
                    Failure::BadRequest(reason)
                }
                other => read_failed(&other),
            }
        })
    })
    .await?;
    let starts: Vec<String> = (0..series.buckets)
        .map(|i| {
            let offset = i64::try_from(i)
                .unwrap_or(i64::MAX)
                .saturating_mul(series.step_ms);
            format_rfc3339_s(UnixMs(series.from_ms.saturating_add(offset)))
        })
        .collect();
    let groups: Vec<Value> = series
        .groups
        .iter()
        .map(|(key, cells)| {
            let total: i128 = cells.iter().sum();
            json!({
                "key": key,
                "cost": cells.iter().map(|c| decimal(*c)).collect::<Vec<_>>(),
                "total": decimal(total),
                "total_nanos": total.to_string(),
            })
        })
        .collect();
    Ok(json!({
        "by": by.column(),
        "allocation": query.allocation,
        "step_ms": series.step_ms,
        "starts": starts,
        "currency": series.currency.unwrap_or_default(),
        "groups": groups,
    }))
}

/// `GET /admin/v1/events/recent?after=N`: this replica's latest usage events as they were
/// written to its log, oldest first (at most [`CONSOLE_TAIL_EVENTS_MAX`], and only those past
/// `after` when given), and `next`, the position to ask after next time.
pub async fn recent(gateway: &Gateway, query: &str) -> Result<Value, Failure> {
    let query = Query::parse(query)?;
    let emitter = gateway.emitter.clone();
    blocking(move || {
        let (first, next) = emitter.log_span();
        let tail = u64::try_from(CONSOLE_TAIL_EVENTS_MAX).unwrap_or(u64::MAX);
        let start = match query.after {
            Some(after) => after.saturating_add(1).max(first),
            None => next.saturating_sub(tail).max(first),
        }
        .max(next.saturating_sub(tail));
        let mut reader = emitter.read_from(start);
        let mut events = Vec::new();
        let mut last = start.checked_sub(1);
        for record in reader.by_ref() {
            let (offset, payload) =
                record.map_err(|e| Failure::Internal(format!("reading the event log: {e}")))?;
            if offset >= next {
                break;
            }
            last = Some(offset);
            if tollgate_sink::log::is_tombstone(&payload) {
                continue;
            }
            // The log holds events and nothing else; a record that is not JSON is skipped.
            if let Ok(mut event) = serde_json::from_slice::<Value>(&payload) {
                event["offset"] = json!(offset);
                events.push(event);
            }
        }
        Ok(json!({
            "events": events,
            "next": last.or(query.after),
        }))
    })
    .await
}

/// What an export is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Export {
    /// The chargeback totals as CSV (`tollgate report --format csv`).
    ChargebackCsv,
    /// The FOCUS statement as CSV.
    FocusCsv,
    /// The FOCUS statement as Parquet.
    FocusParquet,
}

impl Export {
    /// The export a path's last segment names.
    #[must_use]
    pub fn parse(name: &str) -> Option<Export> {
        Some(match name {
            "chargeback.csv" => Export::ChargebackCsv,
            "focus.csv" => Export::FocusCsv,
            "focus.parquet" => Export::FocusParquet,
            _ => return None,
        })
    }

    /// Its media type.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Export::ChargebackCsv | Export::FocusCsv => "text/csv; charset=utf-8",
            Export::FocusParquet => "application/vnd.apache.parquet",
        }
    }

    /// The file name offered to a browser.
    #[must_use]
    pub fn file_name(self) -> &'static str {
        match self {
            Export::ChargebackCsv => "tollgate-chargeback.csv",
            Export::FocusCsv => "tollgate-focus.csv",
            Export::FocusParquet => "tollgate-focus.parquet",
        }
    }
}

/// Checks an export's query and starts making it on a blocking thread, its bytes sent into
/// `out` as they are made. An error after the first bytes cuts the body short (the client
/// sees a broken download, never a partial file passed off as whole).
pub fn export(
    gateway: &Gateway,
    export: Export,
    query: &str,
    out: ChannelSender,
) -> Result<(), Failure> {
    let query = Query::parse(query)?;
    let dir = data_dir(gateway)?;
    let scratch = gateway.config.state_dir.join("exports");
    let (from, to) = query.window();
    let by = query.by.unwrap_or(Dimension::Team);
    let random = gateway.random::<8>();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter::new(out);
        let made = match export {
            Export::ChargebackCsv => rollup::report(&dir, from, to, by)
                .map_err(|e| e.to_string())
                .and_then(|rows| {
                    write_csv(by.column(), &rows, &mut writer).map_err(|e| e.to_string())
                }),
            Export::FocusCsv => tollgate_sink::focus::export_csv(&dir, from, to, &mut writer)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Export::FocusParquet => focus_parquet(&dir, &scratch, random, from, to, &mut writer),
        };
        match made.and_then(|()| writer.finish().map_err(|e| e.to_string())) {
            Ok(()) => {}
            Err(e) => writer.fail(e),
        }
    });
    Ok(())
}

/// The FOCUS Parquet file, made in `scratch` (a file's footer is written last), then sent.
fn focus_parquet(
    dir: &Path,
    scratch: &Path,
    random: [u8; 8],
    from: Option<UnixMs>,
    to: Option<UnixMs>,
    out: &mut ChunkWriter,
) -> Result<(), String> {
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let path = scratch.join(format!("focus-{}.parquet", u64::from_le_bytes(random)));
    let made = tollgate_sink::focus::export_parquet(dir, from, to, &path)
        .map_err(|e| e.to_string())
        .and_then(|_| {
            let mut file =
                std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            io::copy(&mut file, out)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    let _ = std::fs::remove_file(&path);
    made
}

/// Bytes written in chunks of [`CHUNK_BYTES`] into a response body's channel; a client gone
/// is an error that stops the export.
struct ChunkWriter {
    out: ChannelSender,
    buffer: Vec<u8>,
}

const CHUNK_BYTES: usize = 64 * 1024;

impl ChunkWriter {
    fn new(out: ChannelSender) -> ChunkWriter {
        ChunkWriter {
            out,
            buffer: Vec::with_capacity(CHUNK_BYTES),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.out
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }

    fn finish(&mut self) -> io::Result<()> {
        self.send()
    }

    fn fail(&mut self, reason: String) {
        crate::operator::report(&format!("an export stopped part-way: {reason}"));
        let _ = self.out.blocking_send(Err(reason.into()));
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_decimals() {
        assert_eq!(decimal(12_500_000_000), "12.50");
        assert_eq!(decimal(1), "0.000000001");
        assert_eq!(decimal(-3_250_000_000), "-3.25");
        assert_eq!(quantity(16_500_000), "16.5");
        assert_eq!(quantity(278), "0.000278");
        assert_eq!(quantity(0), "0");
    }

    #[test]
    fn a_query_is_parsed_or_refused_by_field() {
        let q = Query::parse("from=2026-11-01T00%3A00%3A00Z&to=2026-12-01T00:00:00Z&by=agent&step=hour&allocation=a+b")
            .unwrap();
        assert_eq!(q.by, Some(Dimension::Agent));
        assert_eq!(q.step_ms, Some(3_600_000));
        assert_eq!(q.allocation.as_deref(), Some("a b"));
        assert_eq!(q.from.unwrap().0, "2026-11-01T00:00:00Z");
        for (bad, field) in [
            ("by=colour", "by"),
            ("step=week", "step"),
            ("from=yesterday", "from"),
            ("by=team&by=model", "by"),
            ("secret=x", "secret"),
            ("after=-1", "after"),
            ("allocation=%zz", "allocation"),
            ("allocation=%ff", "allocation"),
        ] {
            let Err(Failure::BadRequest(message)) = Query::parse(bad) else {
                panic!("{bad} was taken");
            };
            assert!(message.contains(&format!("`{field}`")), "{bad}: {message}");
        }
        assert!(Query::parse("from=2026-12-01T00:00:00Z&to=2026-11-01T00:00:00Z").is_err());
        assert!(Query::parse(&"a".repeat(QUERY_BYTES_MAX + 1)).is_err());
        assert!(Query::parse("").is_ok());
    }
}
