//! Sending an import's records to the gateway's `/v1/usage`, in batches, and the summary of
//! what was booked.
//!
//! Every record is first sent as a dry run, so a record the gateway refuses stops the import
//! before anything is booked, and is named by its file and line; only then are they booked for
//! real. Resending a file is safe: a record already booked counts as a duplicate, never twice.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use http::Method;
use serde_json::{Value, json};
use tollgate_engine::ledger::UsageRecord;

use crate::args::SendArgs;
use crate::client;
use crate::print::{self, decimal, field};
use tollgate_gateway::usage::import::Import;

/// Sends the records in batches: first all of them as a dry run (so a record the gateway
/// refuses stops the import before anything is booked, named by its line), then for real.
pub fn send_records(file: &Path, parsed: &Import, send: &SendArgs) -> anyhow::Result<()> {
    let gateway = Gateway {
        token: metering_token()?,
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?,
        url: &send.admin.url,
        file,
    };
    let batch_records = send.batch_records.max(1);
    let mut totals = Totals::default();
    for dry_run in [true, false] {
        if !dry_run && send.dry_run {
            break;
        }
        for chunk in parsed.records.chunks(batch_records) {
            let answer = gateway.post(chunk, dry_run).context(if dry_run {
                "checking the records; nothing was booked"
            } else {
                "booking the records (resend: records already booked are not booked twice)"
            })?;
            // The pass asked for is the one reported: the dry run's with --dry-run, else the
            // booking's.
            if dry_run == send.dry_run {
                totals.add(&answer);
            }
        }
    }
    if send.admin.json {
        return print_json(file, parsed, send.dry_run, &totals);
    }
    print_summary(file, parsed, send.dry_run, &totals)?;
    warn_conflicts(&totals.conflicts);
    Ok(())
}

/// The token imports authenticate with: a metering key, else the admin token.
fn metering_token() -> anyhow::Result<String> {
    std::env::var("TOLLGATE_METERING_KEY")
        .or_else(|_| std::env::var("TOLLGATE_ADMIN_TOKEN"))
        .context(
            "set TOLLGATE_METERING_KEY (a key with the metering scope) or TOLLGATE_ADMIN_TOKEN",
        )
}

/// Where the records go: the gateway's URL and token, a runtime to wait on its answers, and
/// the file a refused record is reported against.
struct Gateway<'a> {
    runtime: tokio::runtime::Runtime,
    url: &'a str,
    token: String,
    file: &'a Path,
}

impl Gateway<'_> {
    /// Posts one batch to `/v1/usage` and returns the gateway's answer.
    fn post(&self, records: &[(usize, UsageRecord)], dry_run: bool) -> anyhow::Result<Value> {
        let body = json!({
            "records": records.iter().map(|(_, r)| r.to_json()).collect::<Vec<_>>(),
            "dry_run": dry_run,
        });
        self.runtime
            .block_on(client::call(
                self.url,
                &self.token,
                Method::POST,
                "/v1/usage",
                Some(body),
            ))
            .map_err(|e| refused(self.file, records, e))
    }
}

/// A refusal that names a record (`records[i].field`) as the line of the file it came from;
/// any other failure as it is.
fn refused(
    file: &Path,
    records: &[(usize, UsageRecord)],
    error: client::ClientError,
) -> anyhow::Error {
    match error {
        client::ClientError::Refused {
            message,
            param: Some(param),
            ..
        } => {
            // `records[i].field` names the record; its line is the file's.
            let index = param
                .strip_prefix("records[")
                .and_then(|p| p.split_once(']'))
                .and_then(|(i, _)| i.parse::<usize>().ok());
            match index.and_then(|i| records.get(i)) {
                Some((line, _)) => anyhow::anyhow!(
                    "{}:{line}: the gateway refused this record: {message}",
                    file.display()
                ),
                None => anyhow::anyhow!("the gateway refused a record: {message}"),
            }
        }
        other => anyhow::Error::new(other),
    }
}

/// The gateway's answers to one pass, summed over its batches.
#[derive(Default)]
struct Totals {
    /// Records booked by this pass.
    booked: u64,
    /// Records a dry run found it would book.
    would_book: u64,
    /// Records booked before with the same content, so not booked again.
    duplicates: u64,
    /// Records booked before with other content, as the gateway counted them.
    conflicted: u64,
    /// The cost of what was (or would be) booked, in nano-units of `currency`.
    cost_nanos: u128,
    /// The ids of the conflicting records, for the warning.
    conflicts: Vec<String>,
    /// The rate card's currency, as the last answer named it.
    currency: String,
}

impl Totals {
    /// Adds one batch's answer.
    fn add(&mut self, answer: &Value) {
        let count = |name: &str| answer.get(name).and_then(Value::as_u64).unwrap_or(0);
        self.booked += count("booked");
        self.would_book += count("would_book");
        self.duplicates += count("duplicates");
        self.conflicted += count("conflicts");
        self.cost_nanos += u128::from(count("cost_nanos"));
        self.currency = field(answer, "currency");
        for result in answer
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if result.get("status").and_then(Value::as_str) == Some("conflict") {
                self.conflicts.push(field(result, "id"));
            }
        }
    }

    /// The cost as an exact decimal (a sum past `i128` shows as its largest value).
    fn cost(&self) -> String {
        decimal(i128::try_from(self.cost_nanos).unwrap_or(i128::MAX))
    }
}

/// The import's summary as one JSON object (`--json`).
fn print_json(file: &Path, parsed: &Import, dry_run: bool, totals: &Totals) -> anyhow::Result<()> {
    let skipped: serde_json::Map<String, Value> = parsed
        .skipped
        .iter()
        .map(|(reason, n)| ((*reason).to_owned(), json!(n)))
        .collect();
    print::json(&json!({
        "file": file.display().to_string(),
        "records": parsed.records.len(),
        "booked": totals.booked, "would_book": totals.would_book,
        "duplicates": totals.duplicates, "conflicts": totals.conflicted,
        "cost": totals.cost(),
        "cost_nanos": totals.cost_nanos.to_string(),
        "currency": totals.currency,
        "skipped": skipped,
        "dry_run": dry_run,
    }))
}

/// The import's summary in words: records read, skipped by reason, and booked.
fn print_summary(
    file: &Path,
    parsed: &Import,
    dry_run: bool,
    totals: &Totals,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: {} record(s) read",
        file.display(),
        parsed.records.len()
    )?;
    for (reason, n) in &parsed.skipped {
        writeln!(out, "  skipped {n}: {reason}")?;
    }
    let Totals {
        booked,
        would_book,
        duplicates,
        conflicted,
        currency,
        ..
    } = totals;
    let cost = totals.cost();
    if dry_run {
        writeln!(
            out,
            "dry run: {would_book} would be booked ({cost} {currency}), {duplicates} already booked, {conflicted} conflicting; nothing was booked"
        )?;
    } else {
        writeln!(
            out,
            "booked {booked} ({cost} {currency}), {duplicates} already booked, {conflicted} conflicting"
        )?;
    }
    Ok(())
}

/// Warns on stderr of records booked before with other content (the first booking stands); a
/// broken stderr loses only the warning.
fn warn_conflicts(conflicts: &[String]) {
    if !conflicts.is_empty() {
        let _ = writeln!(
            std::io::stderr().lock(),
            "warning: {} record(s) were booked before with other content; the first booking stands: {}",
            conflicts.len(),
            conflicts.join(", ")
        );
    }
}
