//! `tollgate advise`: savings advice from the Parquet files, priced by the rate card, as a
//! table, CSV or JSON.
//!
//! It reads only the data folder and the card, never a running gateway. Every amount is an
//! exact decimal of the integers the advice summed.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde_json::{Value, json};
use tollgate_engine::RateCard;
use tollgate_sink::advice::{self, Advice, AdviceBy, AdviceRules};

use crate::print::{self, decimal};
use crate::report::window;

/// The columns after the group's.
const COLUMNS: [&str; 5] = ["advice", "about", "calls", "spent", "could_save"];

/// What `tollgate advise` was asked.
pub struct AdviseArgs<'a> {
    pub data: &'a Path,
    pub rate_card: &'a Path,
    pub by: &'a str,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub short_answer_tokens: u64,
    pub format: &'a str,
}

/// Prints the advice in `format`.
pub fn run(args: &AdviseArgs<'_>) -> anyhow::Result<()> {
    let by = AdviceBy::parse(args.by).with_context(|| {
        format!(
            "--by {}: choose team, project, allocation or agent",
            args.by
        )
    })?;
    let card = RateCard::load(args.rate_card)
        .with_context(|| format!("--rate-card {}", args.rate_card.display()))?;
    let rules = AdviceRules {
        short_answer_tokens: args.short_answer_tokens,
        ..AdviceRules::default()
    };
    let lines = advice::advise(args.data, &card, by, window(args.from, args.to)?, rules)?;
    let saving: i128 = lines.iter().map(|a| a.saving_nanos).sum();
    match args.format {
        "json" => print::json(&json!({
            "by": args.by, "from": args.from, "to": args.to, "currency": &*card.currency,
            "advice": lines.iter().map(|a| json_line(args.by, a)).collect::<Vec<_>>(),
            "could_save": decimal(saving), "could_save_nanos": saving.to_string(),
        })),
        "csv" => print_csv(args.by, &lines),
        "table" => {
            let mut table: Vec<Vec<String>> = lines
                .iter()
                .map(|a| [vec![group(a)], cells(a)].concat())
                .collect();
            table.push(vec![
                "TOTAL".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                decimal(saving),
            ]);
            writeln!(std::io::stdout().lock(), "currency {}", card.currency)?;
            let columns: Vec<&str> = [args.by].into_iter().chain(COLUMNS).collect();
            print::table(&columns, &table)
        }
        other => anyhow::bail!("--format {other}: choose table, csv or json"),
    }
}

fn group(a: &Advice) -> String {
    a.group.clone().unwrap_or_else(|| "(none)".to_owned())
}

fn kind(a: &Advice) -> &'static str {
    a.kind.map_or("", advice::AdviceKind::as_str)
}

fn cells(a: &Advice) -> Vec<String> {
    vec![
        kind(a).to_owned(),
        a.about.clone(),
        a.calls.to_string(),
        decimal(a.spent_nanos),
        decimal(a.saving_nanos),
    ]
}

fn json_line(by: &str, a: &Advice) -> Value {
    json!({
        by: a.group, "advice": kind(a), "about": a.about, "calls": a.calls,
        "spent": decimal(a.spent_nanos), "spent_nanos": a.spent_nanos.to_string(),
        "could_save": decimal(a.saving_nanos), "could_save_nanos": a.saving_nanos.to_string(),
    })
}

/// The lines as CSV, a cell with a comma or quote quoted as RFC 4180 does.
fn print_csv(by: &str, lines: &[Advice]) -> anyhow::Result<()> {
    let quote = |cell: String| {
        if cell.contains([',', '"']) {
            format!("\"{}\"", cell.replace('"', "\"\""))
        } else {
            cell
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{by},{}", COLUMNS.join(","))?;
    for a in lines {
        let row: Vec<String> = [vec![group(a)], cells(a)]
            .concat()
            .into_iter()
            .map(quote)
            .collect();
        writeln!(out, "{}", row.join(","))?;
    }
    Ok(())
}
