//! What the CLI writes to stdout: JSON, aligned tables, and exact decimals of nano- and
//! micro-units.
//!
//! Money and quantities are integers all the way here and are written digit by digit, never
//! through a float, so a printed amount is the amount booked.

use std::io::Write as _;

use serde_json::Value;

/// A field of a JSON answer as table text: strings as they are, `-` for a missing or null one,
/// anything else as its JSON.
pub fn field(value: &Value, name: &str) -> String {
    match value.get(name) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Writes `value` as pretty JSON on one stdout write.
pub fn json(value: &Value) -> anyhow::Result<()> {
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(value)?
    )?;
    Ok(())
}

/// Writes a header and rows, each column as wide as its widest cell, two spaces between
/// columns and no trailing blanks.
pub fn table(columns: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(String::len)
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(columns.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

pub use tollgate_gateway::control::spend::decimal;
