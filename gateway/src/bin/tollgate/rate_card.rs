//! `tollgate rate-card check`: a rate card file validated offline, with its versions listed or
//! the per-million-token prices in force at one instant.
//!
//! It loads the card exactly as the gateway does, so a card this accepts is a card `serve`
//! accepts; a fault is reported with the file, line and field that the loader names.

use std::io::Write as _;

use anyhow::Context as _;
use tollgate_engine::RateCard;
use tollgate_engine::time::parse_rfc3339;

/// Validates the card at `file`; lists its versions, or with `at` (RFC 3339) the prices in
/// force then.
pub fn check(file: &std::path::Path, at: Option<&str>) -> anyhow::Result<()> {
    let card = RateCard::load(file)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: valid, {} version(s), currency {}",
        file.display(),
        card.versions().len(),
        card.currency
    )?;
    match at {
        None => print_versions(&mut out, &card),
        Some(at) => print_prices_at(&mut out, &card, at),
    }
}

/// One line per version: its id, when it takes effect and how much it prices.
fn print_versions(out: &mut impl std::io::Write, card: &RateCard) -> anyhow::Result<()> {
    for v in card.versions() {
        writeln!(
            out,
            "  {:<16} from {}  {} model(s), {} resource price(s)",
            v.id,
            v.effective_from,
            v.model_count(),
            v.resource_count()
        )?;
    }
    Ok(())
}

/// The version in force at `at` and each model's prices per million tokens under it.
fn print_prices_at(out: &mut impl std::io::Write, card: &RateCard, at: &str) -> anyhow::Result<()> {
    let t = parse_rfc3339(at)
        .map_err(anyhow::Error::msg)
        .context("--at")?;
    let v = card
        .at(t)
        .with_context(|| format!("no version is in force at {t}"))?;
    writeln!(out, "version {} in force at {t}; per million tokens:", v.id)?;
    writeln!(
        out,
        "  {:<40} {:>12} {:>12} {:>12} {:>12}",
        "model", "input", "cached", "cache write", "output"
    )?;
    for m in v.models() {
        let d = |p: tollgate_engine::PricePerMTok| tollgate_engine::Nanos(p.0).to_string();
        writeln!(
            out,
            "  {:<40} {:>12} {:>12} {:>12} {:>12}",
            m.model.as_str(),
            d(m.input_per_mtok),
            d(m.cached_input_per_mtok),
            d(m.cache_write_per_mtok),
            d(m.output_per_mtok)
        )?;
    }
    Ok(())
}
