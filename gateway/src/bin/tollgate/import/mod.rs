//! `tollgate import slurm|opencost|storage`: the file read and parsed whole by the library's
//! importers (`tollgate_gateway::usage::import`), then every record checked with the gateway
//! as a dry run before any is booked ([`send`]).

use std::path::Path;

use anyhow::Context as _;
use tollgate_gateway::usage::import::{Mapping, opencost, read_file, slurm, storage};

use crate::args::ImportCommand;

mod send;

/// `tollgate import slurm|opencost|storage`: the file read and parsed whole with the command's
/// options, then its records sent.
pub fn run(command: ImportCommand) -> anyhow::Result<()> {
    let read = |file: &Path| read_file(file, tollgate_gateway::limits::IMPORT_FILE_BYTES_MAX);
    let mapping = |pairs: &[String]| Mapping::parse(pairs).map_err(anyhow::Error::msg);
    let (file, parsed, send) = match command {
        ImportCommand::Slurm {
            file,
            cluster,
            map,
            core_hours,
            node_hours,
            utc_offset,
            send,
        } => {
            let options = slurm::Options {
                cluster,
                accounts: mapping(&map).context("--map")?,
                core_hours: match core_hours.as_str() {
                    "billing" => slurm::CoreHours::Billing,
                    "cpu" => slurm::CoreHours::Cpu,
                    other => anyhow::bail!("--core-hours {other}: choose billing or cpu"),
                },
                node_hours,
                utc_offset_minutes: utc_offset_minutes(&utc_offset)
                    .with_context(|| format!("--utc-offset {utc_offset}"))?,
            };
            let parsed = slurm::parse(&read(&file)?, &options);
            (file, parsed, send)
        }
        ImportCommand::Opencost {
            file,
            allocation_from,
            map,
            cluster,
            send,
        } => {
            let options = opencost::Options {
                allocation_from: opencost::AllocationFrom::parse(&allocation_from)
                    .map_err(anyhow::Error::msg)
                    .context("--allocation-from")?,
                map: mapping(&map).context("--map")?,
                cluster,
            };
            let parsed = opencost::parse(&read(&file)?, &options);
            (file, parsed, send)
        }
        ImportCommand::Storage { file, map, send } => {
            let parsed = storage::parse(&read(&file)?, &mapping(&map).context("--map")?);
            (file, parsed, send)
        }
    };
    let parsed = parsed.with_context(|| format!("{}", file.display()))?;
    send::send_records(&file, &parsed, &send)
}

/// `+01:00`, `-05:30`, `Z` into minutes east of UTC.
fn utc_offset_minutes(text: &str) -> anyhow::Result<i32> {
    if text == "Z" {
        return Ok(0);
    }
    let (sign, rest) = match text.split_at_checked(1) {
        Some(("+", rest)) => (1, rest),
        Some(("-", rest)) => (-1, rest),
        _ => anyhow::bail!("write the offset as +HH:MM or -HH:MM"),
    };
    let (hours, minutes) = rest
        .split_once(':')
        .context("write the offset as +HH:MM or -HH:MM")?;
    let hours: i32 = hours.parse().context("hours")?;
    let minutes: i32 = minutes.parse().context("minutes")?;
    anyhow::ensure!(
        (0..=14).contains(&hours) && (0..60).contains(&minutes),
        "an offset is at most 14 hours"
    );
    Ok(sign * (hours * 60 + minutes))
}
