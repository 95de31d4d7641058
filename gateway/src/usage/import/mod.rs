//! `tollgate import`: usage records from the formats sites already have, parsed whole before
//! anything is sent.
//!
//! Each importer reads one source's own output ([`slurm`]: `sacct --parsable2`, [`opencost`]:
//! the allocation API's JSON, [`storage`]: a CSV of GB-months) into [`UsageRecord`]s with ids
//! derived from the source (a job id, an allocation and its window, a project and its month),
//! so importing the same file again changes nothing. A file with any bad line is refused as a
//! whole: every bad line is reported with its number and nothing is sent.
//!
//! Quantities are exact: sources that count (seconds, GPUs, cores) are multiplied out in
//! integers; sources that write floating-point text (OpenCost) are read digit by digit. Either
//! way the result is rounded once, to the nearest micro-unit with halves rounded up.
//!
//! The parsers are pure (text in, records or every bad line out), so they are fuzzed; the
//! `tollgate import` command reads the file with [`read_file`] and sends what they parsed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read as _;
use std::path::Path;

use tollgate_engine::ledger::UsageRecord;

pub mod number;
pub mod opencost;
pub mod slurm;
pub mod storage;

/// What a file held: records to send, each with its line, and what was skipped, by reason.
#[derive(Debug, Default)]
pub struct Import {
    /// The records, with the line each came from (1-based).
    pub records: Vec<(usize, UsageRecord)>,
    /// Lines or entries passed over on purpose (job steps, running jobs, idle), by reason.
    pub skipped: BTreeMap<&'static str, u64>,
}

impl Import {
    fn skip(&mut self, reason: &'static str) {
        *self.skipped.entry(reason).or_insert(0) += 1;
    }
}

/// One bad line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// The line's number, 1-based and counting the header.
    pub line: usize,
    /// What is wrong with it, naming the field or column.
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Bad lines reported at most; past it the count is all that is told.
pub const LINE_ERRORS_MAX: usize = 1_000;

/// Every bad line of a file (up to [`LINE_ERRORS_MAX`], and how many there were).
#[derive(Debug, Default, thiserror::Error)]
pub struct ImportError {
    /// The bad lines, in order.
    pub lines: Vec<LineError>,
    /// How many bad lines there were in all.
    pub total: usize,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} bad line(s); nothing was imported", self.total)?;
        for line in &self.lines {
            writeln!(f, "  {line}")?;
        }
        if self.total > self.lines.len() {
            writeln!(f, "  ... and {} more", self.total - self.lines.len())?;
        }
        Ok(())
    }
}

impl ImportError {
    fn push(&mut self, line: usize, reason: impl Into<String>) {
        self.total += 1;
        if self.lines.len() < LINE_ERRORS_MAX {
            self.lines.push(LineError {
                line,
                reason: reason.into(),
            });
        }
    }

    fn into_result(self, import: Import) -> Result<Import, ImportError> {
        if self.total == 0 {
            Ok(import)
        } else {
            Err(self)
        }
    }
}

/// Renames from a source's names to allocations (`--map gpu-lab=ml-training`); a name not
/// mapped is taken as the allocation's own name.
#[derive(Clone, Debug, Default)]
pub struct Mapping(HashMap<String, String>);

impl Mapping {
    /// Parses `from=to` pairs.
    pub fn parse<S: AsRef<str>>(pairs: &[S]) -> Result<Mapping, String> {
        let mut map = HashMap::new();
        for pair in pairs {
            let pair = pair.as_ref();
            let (from, to) = pair
                .split_once('=')
                .filter(|(f, t)| !f.trim().is_empty() && !t.trim().is_empty())
                .ok_or_else(|| format!("`{pair}` is not a mapping like source=allocation"))?;
            if map
                .insert(from.trim().to_owned(), to.trim().to_owned())
                .is_some()
            {
                return Err(format!("`{}` is mapped twice", from.trim()));
            }
        }
        Ok(Mapping(map))
    }

    /// The allocation for `name`.
    #[must_use]
    pub fn allocation<'a>(&'a self, name: &'a str) -> &'a str {
        self.0.get(name).map_or(name, String::as_str)
    }
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file, as given on the command line.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is larger than an import may be; it is refused before it is parsed.
    #[error("{path} is larger than the {limit_bytes}-byte limit of an import")]
    TooLarge {
        /// The file, as given on the command line.
        path: String,
        /// The cap that was passed, in bytes.
        limit_bytes: u64,
    },
    /// The file is not UTF-8 text.
    #[error("{path} is not UTF-8 text")]
    NotText {
        /// The file, as given on the command line.
        path: String,
    },
}

/// Reads a file to import, capped at `limit_bytes`.
pub fn read_file(path: &Path, limit_bytes: u64) -> Result<String, ReadError> {
    let name = path.display().to_string();
    let io = |source| ReadError::Io {
        path: name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(limit_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit_bytes {
        return Err(ReadError::TooLarge {
            path: name,
            limit_bytes,
        });
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotText { path: name })
}

/// Lines of `text` with their 1-based numbers, without line endings.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix('\r').unwrap_or(line)))
}
