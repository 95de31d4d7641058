//! Slurm job accounting, as `sacct --parsable2` prints it, into GPU-, core- and node-hours.
//!
//! Run it as
//!
//! ```text
//! TZ=UTC sacct --allusers --parsable2 --starttime 2026-11-01 --endtime 2026-12-01 \
//!   --format JobID,User,Account,Partition,AllocTRES,ElapsedRaw,Start,End,State,Cluster
//! ```
//!
//! The first line names the columns (any order; others are ignored). Each job's allocation line
//! is billed; its steps (`4242.batch`, `4242.extern`, `4242.0`) are skipped, so nothing is
//! counted twice. Array tasks (`4242_7`) and heterogeneous components (`4242+1`) are jobs of
//! their own. Only finished jobs are billed (`COMPLETED`, `FAILED`, `CANCELLED by 1000`,
//! `TIMEOUT`, `OUT_OF_MEMORY`, `NODE_FAIL`, `PREEMPTED`, `BOOT_FAIL`, `DEADLINE`, `REVOKED`);
//! pending array ranges (`4242_[8-15]`), running, requeued or suspended jobs are skipped and
//! counted, and billed by a later import once they finish. The Slurm account is the allocation
//! unless `--map account=allocation` says otherwise.
//!
//! Quantities: GPU-hours are `gres/gpu` (or the sum of typed `gres/gpu:<type>` entries) times
//! `ElapsedRaw` / 3600; core-hours are the `billing` TRES times the hours where it is present
//! (the site's own billing weights), else `cpu`; node-hours (`--node-hours`) are `node` times
//! the hours. Each is rounded once to the nearest micro-hour. A job that ran for no time, or
//! had nothing of a unit, gives no record of it. Record ids are `slurm:<cluster>:<JobID>:<unit>`,
//! so reading the same job again is the same record.

use std::collections::HashMap;
use std::sync::Arc;

use tollgate_engine::ledger::{RecordId, UsageRecord, parse_name};
use tollgate_engine::time::CivilTime;
use tollgate_engine::{Micros, ResourceUnit, Site, UnixMs};

use super::number::micro_hours;
use super::{Import, ImportError, Mapping, numbered_lines};

/// Where core-hours come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CoreHours {
    /// The `billing` TRES where the job has it (the site's TRESBillingWeights), else `cpu`.
    #[default]
    Billing,
    /// Always `cpu`: for sites whose billing weights already include GPUs.
    Cpu,
}

/// How to read a file.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The cluster, when the file has no `Cluster` column.
    pub cluster: Option<String>,
    /// Accounts to allocations.
    pub accounts: Mapping,
    /// Where core-hours come from.
    pub core_hours: CoreHours,
    /// Also bill node-hours.
    pub node_hours: bool,
    /// The UTC offset of the times in the file, in minutes (`TZ=UTC sacct` makes it 0).
    pub utc_offset_minutes: i32,
}

const REQUIRED: [&str; 8] = [
    "JobID",
    "Account",
    "Partition",
    "AllocTRES",
    "ElapsedRaw",
    "Start",
    "End",
    "State",
];

/// Job states after which a job uses nothing more.
const FINISHED: [&str; 10] = [
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
];

/// Job states of jobs that may still run (or run again).
const NOT_FINISHED: [&str; 14] = [
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "SUSPENDED",
    "RESIZING",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESV_DEL_HOLD",
    "SPECIAL_EXIT",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
    "COMPLETING",
    "CONFIGURING",
];

/// Reads `sacct --parsable2` output.
pub fn parse(text: &str, options: &Options) -> Result<Import, ImportError> {
    let mut import = Import::default();
    let mut errors = ImportError::default();
    let mut lines = numbered_lines(text).filter(|(_, l)| !l.trim().is_empty());
    let header = match Header::parse(lines.next(), options) {
        Ok(header) => header,
        Err((line, reason)) => {
            errors.push(line, reason);
            return Err(errors);
        }
    };
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    for (number, line) in lines {
        let fields: Vec<&str> = line.split('|').collect();
        match read_line(&fields, &header, options) {
            Ok(Line::Skipped(reason)) => import.skip(reason),
            Ok(Line::Job { id, records }) => {
                if let Some(first) = first_line_of.insert(id.to_owned(), number) {
                    errors.push(
                        number,
                        format!("job {id} appears twice (also on line {first})"),
                    );
                    continue;
                }
                import
                    .records
                    .extend(records.into_iter().map(|r| (number, r)));
            }
            Err(reason) => errors.push(number, reason),
        }
    }
    errors.into_result(import)
}

/// Where each column is, found once from the header line.
struct Header {
    /// Fields on every line.
    width: usize,
    /// The `Cluster` column, if the file has one (else `--cluster` names it).
    cluster: Option<usize>,
    /// The `User` column, if the file has one.
    user: Option<usize>,
    /// The `State` column.
    state: usize,
    /// The other required columns.
    columns: Columns,
}

/// The required columns a job's records are made from.
#[derive(Clone, Copy)]
struct Columns {
    job: usize,
    account: usize,
    partition: usize,
    tres: usize,
    elapsed: usize,
    start: usize,
    end: usize,
}

impl Header {
    /// Reads the first non-blank line, or says on which line (and why) the file cannot be read.
    fn parse(first: Option<(usize, &str)>, options: &Options) -> Result<Header, (usize, String)> {
        let Some((header_line, header)) = first else {
            return Err((
                1,
                "empty file: expected a header line of sacct --parsable2 columns".into(),
            ));
        };
        let columns: Vec<&str> = header.split('|').map(str::trim).collect();
        let position = |name: &str| columns.iter().position(|c| c.eq_ignore_ascii_case(name));
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|c| position(c).is_none())
            .collect();
        if !missing.is_empty() {
            return Err((
                header_line,
                format!(
                    "the header lacks {}; run sacct --parsable2 --format {}",
                    missing.join(", "),
                    REQUIRED.join(",")
                ),
            ));
        }
        let cluster = position("Cluster");
        if cluster.is_none() && options.cluster.is_none() {
            return Err((
                header_line,
                "no Cluster column: add it to --format or pass --cluster".into(),
            ));
        }
        let at = |name: &str| position(name).unwrap_or(usize::MAX);
        let [job, account, partition, tres, elapsed, start, end, state] = REQUIRED.map(at);
        Ok(Header {
            width: columns.len(),
            cluster,
            user: position("User"),
            state,
            columns: Columns {
                job,
                account,
                partition,
                tres,
                elapsed,
                start,
                end,
            },
        })
    }
}

/// What one line after the header is.
enum Line<'a> {
    /// Passed over on purpose, for the reason given (counted, not an error).
    Skipped(&'static str),
    /// A finished job's allocation line and its records.
    Job {
        /// The job's id, which no other line may repeat.
        id: &'a str,
        /// At least one record.
        records: Vec<UsageRecord>,
    },
}

/// The trimmed field `i` of a line, empty where the line has none.
fn field<'a>(fields: &[&'a str], i: usize) -> &'a str {
    fields.get(i).map_or("", |f| f.trim())
}

/// Reads one line: a job step or an unfinished job is skipped, a finished job becomes its
/// records, anything else is the reason it is refused.
fn read_line<'a>(
    fields: &[&'a str],
    header: &Header,
    options: &Options,
) -> Result<Line<'a>, String> {
    if fields.len() != header.width {
        return Err(format!(
            "{} fields where the header has {} (is this --parsable2 output?)",
            fields.len(),
            header.width
        ));
    }
    let job_id = field(fields, header.columns.job);
    if job_id.is_empty() || !job_id.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("`{job_id}` is not a job id"));
    }
    if job_id.contains('.') {
        // A step of a job whose allocation line is billed.
        return Ok(Line::Skipped("job steps (billed with their job)"));
    }
    let state = field(fields, header.state);
    let state_word = state
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_end_matches('+')
        .to_ascii_uppercase();
    if NOT_FINISHED.contains(&state_word.as_str()) {
        return Ok(Line::Skipped(
            "jobs not finished (pending, running, requeued, suspended)",
        ));
    }
    if !FINISHED.contains(&state_word.as_str()) {
        return Err(format!("unknown job state `{state}`"));
    }
    let records = job_line(fields, options, header)?;
    if records.is_empty() {
        return Ok(Line::Skipped("jobs that used nothing billable"));
    }
    Ok(Line::Job {
        id: job_id,
        records,
    })
}

/// The records of one finished job's allocation line.
fn job_line(
    fields: &[&str],
    options: &Options,
    header: &Header,
) -> Result<Vec<UsageRecord>, String> {
    let c = header.columns;
    let wanted = quantities(field(fields, c.tres), field(fields, c.elapsed), options)?;
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let start = local_time(field(fields, c.start), options.utc_offset_minutes)
        .map_err(|e| format!("Start: {e}"))?;
    let end = local_time(field(fields, c.end), options.utc_offset_minutes)
        .map_err(|e| format!("End: {e}"))?;
    if end < start {
        return Err(format!("End {end} is before Start {start}"));
    }
    let owner = Owner::parse(fields, options, header)?;
    let job = field(fields, c.job);
    wanted
        .into_iter()
        .map(|(unit, quantity)| {
            Ok(UsageRecord {
                id: RecordId::parse(&format!("slurm:{}:{job}:{}", owner.cluster, unit.as_str()))?,
                allocation: Arc::clone(&owner.allocation),
                unit,
                quantity,
                start,
                end,
                site: Site {
                    cluster: Some(Arc::clone(&owner.cluster)),
                    partition: owner.partition.clone(),
                    instance_type: None,
                },
                user: owner.user.clone(),
                reservation: None,
            })
        })
        .collect()
}

/// The GPU-, core- and node-hours of a job from its `AllocTRES` and `ElapsedRaw`, only the
/// units it used more than nothing of.
fn quantities(
    tres: &str,
    elapsed: &str,
    options: &Options,
) -> Result<Vec<(ResourceUnit, Micros)>, String> {
    let elapsed: u64 = elapsed
        .parse()
        .map_err(|_| format!("ElapsedRaw `{elapsed}` is not a number of seconds"))?;
    let tres = parse_tres(tres)?;
    let gpus = tres.get("gres/gpu").copied().unwrap_or_else(|| {
        tres.iter()
            .filter(|(k, _)| k.starts_with("gres/gpu:"))
            .map(|(_, v)| *v)
            .sum()
    });
    let cores = match options.core_hours {
        CoreHours::Billing => tres.get("billing").or_else(|| tres.get("cpu")),
        CoreHours::Cpu => tres.get("cpu"),
    }
    .copied()
    .unwrap_or(0);
    let nodes = if options.node_hours {
        tres.get("node").copied().unwrap_or(0)
    } else {
        0
    };
    let mut wanted = Vec::new();
    for (unit, count) in [
        (ResourceUnit::GpuHour, gpus),
        (ResourceUnit::CoreHour, cores),
        (ResourceUnit::NodeHour, nodes),
    ] {
        let quantity = micro_hours(count, elapsed)?;
        if quantity > Micros(0) {
            wanted.push((unit, quantity));
        }
    }
    Ok(wanted)
}

/// Whom a job's records charge and where it ran, each name checked.
struct Owner {
    /// The job's account, renamed by `--map`.
    allocation: Arc<str>,
    /// From the `Cluster` column, else `--cluster`.
    cluster: Arc<str>,
    /// `None` where the line names no partition.
    partition: Option<Arc<str>>,
    /// `None` where the file has no `User` column or the line names no user.
    user: Option<Arc<str>>,
}

impl Owner {
    /// Reads the job's cluster, account, partition and user.
    fn parse(fields: &[&str], options: &Options, header: &Header) -> Result<Owner, String> {
        let c = header.columns;
        let cluster = match header.cluster {
            Some(i) => field(fields, i).to_owned(),
            None => options.cluster.clone().unwrap_or_default(),
        };
        let cluster = parse_name("Cluster", &cluster).map_err(|e| e.to_string())?;
        let account = field(fields, c.account);
        if account.is_empty() {
            return Err("the job has no Account to charge".into());
        }
        let allocation = parse_name("Account", options.accounts.allocation(account))
            .map_err(|e| e.to_string())?;
        let partition = match field(fields, c.partition) {
            "" => None,
            p => Some(parse_name("Partition", p).map_err(|e| e.to_string())?),
        };
        let user = match header.user.map(|i| field(fields, i)) {
            None | Some("") => None,
            Some(u) => Some(parse_name("User", u).map_err(|e| e.to_string())?),
        };
        Ok(Owner {
            allocation,
            cluster,
            partition,
            user,
        })
    }
}

/// `billing=8,cpu=8,gres/gpu=2,mem=64G,node=2` into counts of the entries tollgate reads
/// (`billing`, `cpu`, `node`, `gres/gpu...`); others (`mem=64G`, licenses) are passed over.
fn parse_tres(text: &str) -> Result<HashMap<&str, u64>, String> {
    let mut counts = HashMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, value) = entry
            .split_once('=')
            .ok_or_else(|| format!("AllocTRES entry `{entry}` is not name=value"))?;
        let counted = matches!(name, "billing" | "cpu" | "node") || name.starts_with("gres/gpu");
        if !counted {
            continue;
        }
        let value: u64 = value
            .parse()
            .map_err(|_| format!("AllocTRES `{name}={value}` is not a whole number"))?;
        counts.insert(name, value);
    }
    Ok(counts)
}

/// `2026-11-20T09:00:00` at `offset_minutes` from UTC.
fn local_time(text: &str, offset_minutes: i32) -> Result<UnixMs, String> {
    let bad = || format!("`{text}` is not a time like 2026-11-20T09:00:00");
    if matches!(text, "" | "Unknown" | "None") {
        return Err(format!("`{text}`: a finished job that ran needs its time"));
    }
    let (date, time) = text.split_once('T').ok_or_else(bad)?;
    let mut date_parts = date.splitn(3, '-');
    let mut time_parts = time.splitn(3, ':');
    let next = |parts: &mut std::str::SplitN<'_, char>| -> Result<i64, String> {
        parts
            .next()
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse().ok())
            .ok_or_else(bad)
    };
    let year = next(&mut date_parts)?;
    let month = next(&mut date_parts)?;
    let day = next(&mut date_parts)?;
    let hour = next(&mut time_parts)?;
    let minute = next(&mut time_parts)?;
    let second = next(&mut time_parts)?;
    let small = |v: i64| u8::try_from(v).map_err(|_| bad());
    let civil = CivilTime {
        year,
        month: small(month)?,
        day: small(day)?,
        hour: small(hour)?,
        minute: small(minute)?,
        second: small(second)?,
        millisecond: 0,
    };
    let local = UnixMs::from_civil(civil).ok_or_else(bad)?;
    Ok(local.plus_ms(-i64::from(offset_minutes) * 60_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `sacct --parsable2` as Slurm prints it (fields as in the sacct man page): a GPU job on
    /// two nodes with its steps, an array job's finished tasks and its pending range, a
    /// heterogeneous job, a running job, a job cancelled before it started (no Start, zero
    /// length), a job cancelled by a user while running, a timeout and a node failure.
    const SACCT: &str = "\
JobID|User|Account|Partition|AllocTRES|ElapsedRaw|Start|End|State|Cluster
4242|ada|ml-lab|h100|billing=16,cpu=16,gres/gpu:h100=8,gres/gpu=8,mem=512G,node=2|5400|2026-11-20T09:00:00|2026-11-20T10:30:00|COMPLETED|hpc1
4242.batch||ml-lab||cpu=8,gres/gpu:h100=4,gres/gpu=4,mem=256G,node=1|5400|2026-11-20T09:00:00|2026-11-20T10:30:00|COMPLETED|hpc1
4242.extern||ml-lab||billing=16,cpu=16,gres/gpu=8,mem=512G,node=2|5400|2026-11-20T09:00:00|2026-11-20T10:30:00|COMPLETED|hpc1
4242.0||ml-lab||cpu=16,gres/gpu=8,mem=512G,node=2|5390|2026-11-20T09:00:05|2026-11-20T10:29:55|COMPLETED|hpc1
4300_1|bob|physics|cpu|billing=4,cpu=4,mem=16G,node=1|3600|2026-11-20T11:00:00|2026-11-20T12:00:00|COMPLETED|hpc1
4300_1.batch||physics||cpu=4,mem=16G,node=1|3600|2026-11-20T11:00:00|2026-11-20T12:00:00|COMPLETED|hpc1
4300_2|bob|physics|cpu|billing=4,cpu=4,mem=16G,node=1|1800|2026-11-20T11:00:00|2026-11-20T11:30:00|FAILED|hpc1
4300_[3-9%2]|bob|physics|cpu||0|Unknown|Unknown|PENDING|hpc1
4400+0|cy|physics|cpu|billing=2,cpu=2,mem=4G,node=1|60|2026-11-20T13:00:00|2026-11-20T13:01:00|COMPLETED|hpc1
4400+1|cy|physics|a100|billing=9,cpu=1,gres/gpu=1,mem=4G,node=1|60|2026-11-20T13:00:00|2026-11-20T13:01:00|COMPLETED|hpc1
4500|dee|ml-lab|h100|billing=8,cpu=8,gres/gpu=4,mem=128G,node=1|7200|2026-11-20T14:00:00|Unknown|RUNNING|hpc1
4501|dee|ml-lab|h100||0|None|2026-11-20T14:05:00|CANCELLED by 1000|hpc1
4502|dee|ml-lab|h100|billing=8,cpu=8,gres/gpu=1,mem=128G,node=1|1|2026-11-20T15:00:00|2026-11-20T15:00:01|CANCELLED by 1000|hpc1
4503|eve|physics|cpu|billing=64,cpu=64,mem=200G,node=1|86400|2026-11-19T00:00:00|2026-11-20T00:00:00|TIMEOUT|hpc1
4504|eve|physics|cpu|billing=64,cpu=64,mem=200G,node=1|0|2026-11-20T16:00:00|2026-11-20T16:00:00|NODE_FAIL|hpc1
";

    fn quantities(import: &Import) -> Vec<(String, u64)> {
        import
            .records
            .iter()
            .map(|(_, r)| (r.id.as_str().to_owned(), r.quantity.0))
            .collect()
    }

    #[test]
    fn real_sacct_output_bills_each_finished_job_once() {
        let import = parse(SACCT, &Options::default()).unwrap();
        assert_eq!(
            quantities(&import),
            vec![
                // 8 GPUs and billing 16 for 1.5 h; the steps add nothing.
                ("slurm:hpc1:4242:gpu_hour".into(), 12_000_000),
                ("slurm:hpc1:4242:core_hour".into(), 24_000_000),
                ("slurm:hpc1:4300_1:core_hour".into(), 4_000_000),
                ("slurm:hpc1:4300_2:core_hour".into(), 2_000_000),
                // 60 s: 2/60 h and, for the GPU component, 1/60 h and billing 9 (weights).
                ("slurm:hpc1:4400+0:core_hour".into(), 33_333),
                ("slurm:hpc1:4400+1:gpu_hour".into(), 16_667),
                ("slurm:hpc1:4400+1:core_hour".into(), 150_000),
                // One second of one GPU: 277.78 micro-hours, rounded once.
                ("slurm:hpc1:4502:gpu_hour".into(), 278),
                ("slurm:hpc1:4502:core_hour".into(), 2_222),
                ("slurm:hpc1:4503:core_hour".into(), 1_536_000_000),
            ]
        );
        let first = &import.records[0].1;
        assert_eq!(&*first.allocation, "ml-lab");
        assert_eq!(first.site.partition.as_deref(), Some("h100"));
        assert_eq!(first.user.as_deref(), Some("ada"));
        assert_eq!(first.start.to_string(), "2026-11-20T09:00:00.000Z");
        assert_eq!(first.end.to_string(), "2026-11-20T10:30:00.000Z");
        assert_eq!(import.records[0].0, 2, "line numbers count the header");
        let skipped: Vec<(&str, u64)> = import.skipped.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(
            skipped,
            vec![
                ("job steps (billed with their job)", 4),
                (
                    "jobs not finished (pending, running, requeued, suspended)",
                    2
                ),
                ("jobs that used nothing billable", 2),
            ]
        );
        // Reading it again gives the same records.
        assert_eq!(
            parse(SACCT, &Options::default()).unwrap().records,
            import.records
        );
    }

    #[test]
    fn options_choose_cores_nodes_accounts_cluster_and_zone() {
        let text = "JobID|Account|Partition|AllocTRES|ElapsedRaw|Start|End|State\n\
                    77|gpu-lab|a100|billing=20,cpu=4,gres/gpu=2,node=2|3600|2026-11-20T10:00:00|2026-11-20T11:00:00|COMPLETED\n";
        assert!(parse(text, &Options::default()).is_err(), "no cluster");
        let options = Options {
            cluster: Some("hpc9".into()),
            accounts: Mapping::parse(&["gpu-lab=ml-training"]).unwrap(),
            core_hours: CoreHours::Cpu,
            node_hours: true,
            utc_offset_minutes: 60,
        };
        let import = parse(text, &options).unwrap();
        assert_eq!(
            quantities(&import),
            vec![
                ("slurm:hpc9:77:gpu_hour".into(), 2_000_000),
                ("slurm:hpc9:77:core_hour".into(), 4_000_000),
                ("slurm:hpc9:77:node_hour".into(), 2_000_000),
            ]
        );
        let record = &import.records[0].1;
        assert_eq!(&*record.allocation, "ml-training");
        assert_eq!(record.start.to_string(), "2026-11-20T09:00:00.000Z");
    }

    #[test]
    fn bad_lines_are_all_reported_with_their_numbers() {
        let text = "JobID|Account|Partition|AllocTRES|ElapsedRaw|Start|End|State|Cluster\n\
                    1|a|p|cpu=1|60|2026-11-20T10:00:00|2026-11-20T10:01:00|COMPLETED|c\n\
                    2|a|p|cpu=x|60|2026-11-20T10:00:00|2026-11-20T10:01:00|COMPLETED|c\n\
                    3|a|p|cpu=1|sixty|2026-11-20T10:00:00|2026-11-20T10:01:00|COMPLETED|c\n\
                    4|a|p|cpu=1|60|2026-11-20T10:00:00|2026-11-20T10:01:00|EXPLODED|c\n\
                    5|a|p|cpu=1|60|yesterday|2026-11-20T10:01:00|COMPLETED|c\n\
                    6|a|p|cpu=1|60\n\
                    1|a|p|cpu=1|60|2026-11-20T10:00:00|2026-11-20T10:01:00|COMPLETED|c\n\
                    7||p|cpu=1|60|2026-11-20T10:00:00|2026-11-20T10:01:00|COMPLETED|c\n\
                    x8|a|p|cpu=1|60|2026-11-20T10:00:00|2026-11-20T10:01:00|COMPLETED|c\n\
                    9|a|p|cpu=1|60|2026-11-20T10:00:00|2026-11-20T09:01:00|COMPLETED|c\n";
        let errors = parse(text, &Options::default()).unwrap_err();
        let lines: Vec<usize> = errors.lines.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7, 8, 9, 10, 11]);
        let all = errors.to_string();
        for needle in [
            "line 3: AllocTRES `cpu=x`",
            "line 4: ElapsedRaw `sixty`",
            "line 5: unknown job state `EXPLODED`",
            "line 6: Start: `yesterday`",
            "line 7: 5 fields where the header has 9",
            "line 8: job 1 appears twice (also on line 2)",
            "line 9: the job has no Account",
            "line 10: `x8` is not a job id",
            "line 11: End",
            "nothing was imported",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
        let errors = parse("JobID|State\n", &Options::default()).unwrap_err();
        assert_eq!(errors.lines[0].line, 1);
        assert!(errors.lines[0].reason.contains("AllocTRES"));
        assert!(parse("", &Options::default()).is_err());
    }

    proptest! {
        #[test]
        fn any_input_parses_or_is_refused_without_panicking(text in "(?s).{0,400}") {
            let _ = parse(&text, &Options::default());
            let with_header = format!("JobID|Account|Partition|AllocTRES|ElapsedRaw|Start|End|State|Cluster\n{text}");
            let _ = parse(&with_header, &Options::default());
        }

        #[test]
        fn any_fields_parse_or_are_refused_without_panicking(
            fields in proptest::collection::vec("[-0-9A-Za-z_=,/:.+\\[\\]% ]{0,30}", 9)
        ) {
            let text = format!(
                "JobID|Account|Partition|AllocTRES|ElapsedRaw|Start|End|State|Cluster\n{}\n",
                fields.join("|")
            );
            let _ = parse(&text, &Options::default());
        }
    }
}
