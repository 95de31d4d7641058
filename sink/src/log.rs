//! The durable local log: segment files of length-prefixed, CRC32C-checked records.
//!
//! A record is `[len: u32 LE][crc32c(payload): u32 LE][payload]`. Records are numbered from 0
//! across the whole log (their *offset*); a segment file is named by the offset of its first
//! record (`00000000000000000000.log`) and is closed for appends once it passes
//! `segment_bytes_max`. Appends go to the operating system at once (a `kill -9` loses nothing
//! written); [`Log::sync`] makes them survive a machine crash, and the caller decides how often
//! (group commit).
//!
//! **Invariant:** after [`Log::open`], the log holds exactly the records that were whole and
//! intact at the end of the last segment; a torn or corrupt tail (a crash mid-write) is cut back
//! to the last good record and reported, never fatal. A corrupt record in a sealed segment is an
//! error naming the segment and offset when it is read, never a silent skip; [`quarantine`]
//! turns it and the rest of its segment into tombstones (offsets kept, the original kept
//! aside) only when an operator accepts that loss.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Bytes before each payload.
const HEADER_BYTES: u64 = 8;

/// Largest record accepted: a usage event is under a kilobyte; anything near this is damage.
pub const RECORD_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// Default size at which a segment is sealed and a new one begun.
pub const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Why the log failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Opening, reading, writing, syncing or removing a segment or the folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The segment file or log folder.
        path: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// A sealed segment holds a record that fails its check.
    #[error("{path}: record {offset} is corrupt ({reason})")]
    Corrupt {
        /// The sealed segment file.
        path: String,
        /// The record's offset.
        offset: u64,
        /// Which check failed (the segment ends early, the checksum does not match, ...).
        reason: &'static str,
    },
    /// A record larger than [`RECORD_BYTES_MAX`] was offered.
    #[error("a {0}-byte record is larger than the log's record limit")]
    TooLarge(usize),
    /// [`quarantine`] was asked for a record outside the sealed segments.
    #[error("record {0} is not in a sealed segment of the log")]
    NotSealed(u64),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What opening the log found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Whole records kept in the log, in every segment, after any cut.
    pub records: u64,
    /// Bytes cut from the end of the last segment (a torn or corrupt tail).
    pub cut_bytes: u64,
    /// Why the tail was cut, if it was.
    pub cut_reason: Option<&'static str>,
}

/// The log, open for appends.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    segment_bytes_max: u64,
    /// First offset of each segment, ascending.
    segments: Vec<u64>,
    active: File,
    active_bytes: u64,
    /// Bytes of the sealed segments (kept as they roll and are removed, so [`Log::bytes`]
    /// costs nothing).
    sealed_bytes: u64,
    next_offset: u64,
    /// A failed write may have left part of a record past `active_bytes`, not yet cut off.
    torn: bool,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// Reads one record at the reader's position: `Ok(None)` at a clean end, `Err(reason)` for a
/// torn or corrupt record.
fn read_record(reader: &mut impl Read) -> Result<Option<Vec<u8>>, &'static str> {
    let mut header = [0u8; HEADER_BYTES as usize];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err("torn record header"),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err("unreadable record header"),
        }
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > RECORD_BYTES_MAX {
        return Err("record length out of range");
    }
    let mut payload = vec![0u8; len as usize];
    if reader.read_exact(&mut payload).is_err() {
        return Err("torn record payload");
    }
    if crc32c::crc32c(&payload) != crc {
        return Err("checksum mismatch");
    }
    Ok(Some(payload))
}

impl Log {
    /// Opens (or creates) the log in `dir`, cutting a torn or corrupt tail of the last segment.
    pub fn open(dir: &Path, segment_bytes_max: u64) -> Result<(Log, Recovery), LogError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let mut segments: Vec<u64> = fs::read_dir(dir)
            .map_err(io_at(dir))?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name();
                let name = name.to_str()?;
                name.strip_suffix(".log")?.parse::<u64>().ok()
            })
            .collect();
        segments.sort_unstable();
        if segments.is_empty() {
            segments.push(0);
        }
        let last_base = segments.last().copied().unwrap_or(0);
        let last_path = segment_path(dir, last_base);
        let active = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&last_path)
            .map_err(io_at(&last_path))?;
        // Walk the last segment to its last good record.
        let mut reader = BufReader::new(&active);
        let mut good_bytes = 0u64;
        let mut count = 0u64;
        let mut cut_reason = None;
        loop {
            match read_record(&mut reader) {
                Ok(Some(payload)) => {
                    good_bytes += HEADER_BYTES + payload.len() as u64;
                    count += 1;
                }
                Ok(None) => break,
                Err(reason) => {
                    cut_reason = Some(reason);
                    break;
                }
            }
        }
        let total = active.metadata().map_err(io_at(&last_path))?.len();
        if total > good_bytes {
            active.set_len(good_bytes).map_err(io_at(&last_path))?;
            active.sync_all().map_err(io_at(&last_path))?;
        }
        let recovery = Recovery {
            records: last_base + count,
            cut_bytes: total - good_bytes,
            cut_reason: cut_reason.or((total > good_bytes).then_some("torn record")),
        };
        let sealed_bytes = segments
            .iter()
            .take(segments.len().saturating_sub(1))
            .map(|base| fs::metadata(segment_path(dir, *base)).map_or(0, |m| m.len()))
            .sum();
        let log = Log {
            dir: dir.to_owned(),
            segment_bytes_max: segment_bytes_max.max(HEADER_BYTES + 1),
            segments,
            active,
            active_bytes: good_bytes,
            sealed_bytes,
            next_offset: last_base + count,
            torn: false,
        };
        Ok((log, recovery))
    }

    /// The offset the next record will get (the number of records ever appended).
    #[must_use]
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The first offset still on disk (older segments may have been removed).
    #[must_use]
    pub fn first_offset(&self) -> u64 {
        self.segments.first().copied().unwrap_or(0)
    }

    /// Removes sealed segments holding only records below `offset` (every reader of the log
    /// is past them); the active segment is never removed. Returns the segments and bytes
    /// removed.
    pub fn remove_before(&mut self, offset: u64) -> Result<(u64, u64), LogError> {
        let mut removed = (0, 0);
        while self.segments.len() > 1 {
            let (base, next) = (self.segments[0], self.segments[1]);
            if next > offset {
                break;
            }
            let path = segment_path(&self.dir, base);
            let bytes = fs::metadata(&path).map_or(0, |m| m.len());
            fs::remove_file(&path).map_err(io_at(&path))?;
            self.segments.remove(0);
            self.sealed_bytes = self.sealed_bytes.saturating_sub(bytes);
            removed.0 += 1;
            removed.1 += bytes;
        }
        if removed.0 > 0 {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_at(&self.dir))?;
        }
        Ok(removed)
    }

    /// Bytes the log takes on disk (every segment).
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.sealed_bytes + self.active_bytes
    }

    /// Appends `payloads` as consecutive records in one write; returns the offset of the first.
    /// The bytes are with the operating system when this returns (a process kill loses nothing);
    /// call [`Log::sync`] to survive a machine crash.
    pub fn append<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Result<u64, LogError> {
        let first = self.next_offset;
        let mut buffer = Vec::with_capacity(
            payloads
                .iter()
                .map(|p| p.as_ref().len() + HEADER_BYTES as usize)
                .sum(),
        );
        let mut buffered = 0;
        for payload in payloads {
            let payload = payload.as_ref();
            if payload.len() > RECORD_BYTES_MAX as usize {
                return Err(LogError::TooLarge(payload.len()));
            }
            if self.active_bytes + buffer.len() as u64 >= self.segment_bytes_max {
                self.write(&buffer, buffered)?;
                buffer.clear();
                buffered = 0;
                self.roll()?;
            }
            push_record(&mut buffer, payload);
            buffered += 1;
        }
        self.write(&buffer, buffered)?;
        Ok(first)
    }

    /// Writes `records` whole records to the active segment. A write cut short (a full disk)
    /// is cut back off, so the segment still ends on a record boundary and the offsets handed
    /// out stay those of the records on disk: the next append goes on from there.
    fn write(&mut self, bytes: &[u8], records: u64) -> Result<(), LogError> {
        let path = self.active_path();
        if self.torn {
            self.active
                .set_len(self.active_bytes)
                .map_err(io_at(&path))?;
            self.torn = false;
        }
        if bytes.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.active.write_all(bytes) {
            // Shrinking needs no space; should it fail anyway, every append tries it first.
            self.torn = self.active.set_len(self.active_bytes).is_err();
            return Err(io_at(&path)(e));
        }
        self.active_bytes += bytes.len() as u64;
        self.next_offset += records;
        Ok(())
    }

    /// Seals the active segment (synced) and starts the next at the next offset.
    fn roll(&mut self) -> Result<(), LogError> {
        let path = self.active_path();
        self.active.sync_data().map_err(io_at(&path))?;
        let base = self.next_offset;
        let next = segment_path(&self.dir, base);
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&next)
            .map_err(io_at(&next))?;
        // The new file's name must survive a crash too: records written to a segment the
        // folder does not list are lost with it. Until it is synced the sealed segment stays
        // active, so a failed roll is tried again by the next append.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at(&self.dir))?;
        self.active = file;
        self.segments.push(base);
        self.sealed_bytes += self.active_bytes;
        self.active_bytes = 0;
        Ok(())
    }

    fn active_path(&self) -> PathBuf {
        segment_path(&self.dir, self.segments.last().copied().unwrap_or(0))
    }

    /// A handle on the active segment, to sync it without holding the log (group commit from
    /// another thread while appends go on).
    pub fn active_file(&self) -> Result<File, LogError> {
        let path = self.active_path();
        self.active.try_clone().map_err(io_at(&path))
    }

    /// Makes every appended record survive a machine crash.
    pub fn sync(&mut self) -> Result<(), LogError> {
        let path = self.active_path();
        self.active.sync_data().map_err(io_at(&path))
    }

    /// Reads records from `offset` on, in order.
    pub fn read_from(&self, offset: u64) -> LogReader {
        LogReader {
            dir: self.dir.clone(),
            segments: self.segments.clone(),
            end: self.next_offset,
            next: offset,
            current: None,
        }
    }
}

/// Reads a log another process may be appending to, from `offset` on, without changing it:
/// the end is wherever the last segment's last whole record is (an incomplete one at the very
/// end is a write in progress, not damage).
pub fn read(dir: &Path, offset: u64) -> Result<LogReader, LogError> {
    Ok(LogReader {
        dir: dir.to_owned(),
        segments: segment_bases(dir)?,
        end: u64::MAX,
        next: offset,
        current: None,
    })
}

/// The first offsets of the segments in `dir`, ascending.
fn segment_bases(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut segments: Vec<u64> = fs::read_dir(dir)
        .map_err(io_at(dir))?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            name.to_str()?.strip_suffix(".log")?.parse::<u64>().ok()
        })
        .collect();
    segments.sort_unstable();
    Ok(segments)
}

/// Whether a record is a tombstone: a record [`quarantine`] put in place of damaged ones, which
/// every reader passes over.
#[must_use]
pub fn is_tombstone(payload: &[u8]) -> bool {
    payload.is_empty()
}

/// What [`quarantine`] did to a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// The segment made readable again.
    pub segment: PathBuf,
    /// Where the damaged original is kept.
    pub original: PathBuf,
    /// Its records before the damage, kept as they were.
    pub kept: u64,
    /// Records from the damage to the segment's end, each now a tombstone.
    pub tombstones: u64,
}

/// Makes a sealed segment whose record at `offset` is damaged readable again, for an operator
/// who accepts losing what the damage took: the segment's records before `offset` are kept and
/// every record from `offset` to the next segment's start becomes a tombstone (the damage may
/// have taken the framing, so nothing after it in the segment is trusted), so offsets stay
/// those of the records. The damaged original is kept beside it as `<base>.corrupt`. Call it
/// with no reader or writer on that segment (at start); the active segment is refused (its
/// damaged tail is cut when the log is opened).
pub fn quarantine(dir: &Path, offset: u64) -> Result<Quarantined, LogError> {
    let segments = segment_bases(dir)?;
    let index = segments.partition_point(|base| *base <= offset);
    let (Some(&base), Some(&next)) = (
        index.checked_sub(1).and_then(|i| segments.get(i)),
        segments.get(index),
    ) else {
        return Err(LogError::NotSealed(offset));
    };
    let segment = segment_path(dir, base);
    let mut reader = BufReader::new(File::open(&segment).map_err(io_at(&segment))?);
    let mut rewritten = Vec::new();
    for at in base..offset {
        let payload = read_record(&mut reader)
            .ok()
            .flatten()
            .ok_or_else(|| LogError::Corrupt {
                path: segment.display().to_string(),
                offset: at,
                reason: "damaged before the record to quarantine",
            })?;
        push_record(&mut rewritten, &payload);
    }
    for _ in offset..next {
        push_record(&mut rewritten, b"");
    }
    let original = dir.join(format!("{base:020}.corrupt"));
    fs::copy(&segment, &original).map_err(io_at(&original))?;
    let temporary = dir.join(format!("{base:020}.tmp"));
    let mut file = File::create(&temporary).map_err(io_at(&temporary))?;
    file.write_all(&rewritten).map_err(io_at(&temporary))?;
    file.sync_all().map_err(io_at(&temporary))?;
    fs::rename(&temporary, &segment).map_err(io_at(&segment))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))?;
    Ok(Quarantined {
        segment,
        original,
        kept: offset - base,
        tombstones: next - offset,
    })
}

/// Appends one framed record to `out`.
fn push_record(out: &mut Vec<u8>, payload: &[u8]) {
    // A payload read back or a tombstone: never past RECORD_BYTES_MAX, so the length fits.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Records from an offset to the end the log had when the reader was made.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    segments: Vec<u64>,
    end: u64,
    next: u64,
    current: Option<(PathBuf, BufReader<File>)>,
}

impl LogReader {
    /// The first offset the log still holds (older segments may have been removed); 0 for an
    /// empty log.
    #[must_use]
    pub fn first_offset(&self) -> u64 {
        self.segments.first().copied().unwrap_or(0)
    }

    fn open_at(&mut self, offset: u64) -> Result<(), LogError> {
        let index = self.segments.partition_point(|base| *base <= offset);
        let base = index
            .checked_sub(1)
            .and_then(|i| self.segments.get(i))
            .copied()
            .unwrap_or(0);
        let path = segment_path(&self.dir, base);
        let file = File::open(&path).map_err(io_at(&path))?;
        let mut reader = BufReader::new(file);
        // Skip to the record wanted, checking each one passed.
        for skipped in base..offset {
            match read_record(&mut reader) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(LogError::Corrupt {
                        path: path.display().to_string(),
                        offset: skipped,
                        reason: "segment ends early",
                    });
                }
                Err(reason) => {
                    return Err(LogError::Corrupt {
                        path: path.display().to_string(),
                        offset: skipped,
                        reason,
                    });
                }
            }
        }
        self.current = Some((path, reader));
        Ok(())
    }
}

impl Iterator for LogReader {
    type Item = Result<(u64, Vec<u8>), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Records below the first segment were removed once every reader had them: a reader
        // asking for them starts at the oldest record kept.
        if let Some(first) = self.segments.first()
            && self.next < *first
            && self.current.is_none()
        {
            self.next = *first;
        }
        if self.next >= self.end {
            return None;
        }
        let starts_segment = self.segments.binary_search(&self.next).is_ok();
        if (self.current.is_none() || starts_segment)
            && let Err(e) = self.open_at(self.next)
        {
            let live_end =
                self.end == u64::MAX && self.segments.last().is_none_or(|last| *last <= self.next);
            self.next = self.end;
            // A live log's last segment may simply not reach the offset yet.
            return if live_end { None } else { Some(Err(e)) };
        }
        let in_last_segment = self.segments.last().is_none_or(|last| *last <= self.next);
        let (path, reader) = self.current.as_mut()?;
        let offset = self.next;
        let record = read_record(reader);
        // Reading a live log: the last segment ends where its writer has got to.
        if self.end == u64::MAX && in_last_segment && !matches!(record, Ok(Some(_))) {
            return None;
        }
        let item = match record {
            Ok(Some(payload)) => Ok((offset, payload)),
            Ok(None) => Err(LogError::Corrupt {
                path: path.display().to_string(),
                offset,
                reason: "segment ends early",
            }),
            Err(reason) => Err(LogError::Corrupt {
                path: path.display().to_string(),
                offset,
                reason,
            }),
        };
        self.next = if item.is_ok() { offset + 1 } else { self.end };
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Dir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("tollgate-log-{name}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            Dir(path)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn all(log: &Log) -> Vec<Vec<u8>> {
        log.read_from(0).map(|r| r.unwrap().1).collect()
    }

    #[test]
    fn appends_survive_reopening_across_segments() {
        let dir = Dir::new("reopen");
        let (mut log, recovery) = Log::open(&dir.0, 100).unwrap();
        assert_eq!(recovery, Recovery::default());
        let records: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; usize::from(i % 7) * 5]).collect();
        for chunk in records.chunks(3) {
            log.append(chunk).unwrap();
        }
        log.sync().unwrap();
        assert_eq!(log.next_offset(), 50);
        assert!(log.segments.len() > 5, "small segments roll");
        drop(log);
        let (log, recovery) = Log::open(&dir.0, 100).unwrap();
        assert_eq!(recovery.records, 50);
        assert_eq!(recovery.cut_bytes, 0);
        assert_eq!(all(&log), records);
        let from_17: Vec<u64> = log.read_from(17).map(|r| r.unwrap().0).collect();
        assert_eq!(from_17, (17..50).collect::<Vec<_>>());
    }

    #[test]
    fn consumed_segments_are_removed_and_the_rest_still_reads() {
        let dir = Dir::new("retention");
        let (mut log, _) = Log::open(&dir.0, 100).unwrap();
        for i in 0..40u8 {
            log.append(&[vec![i; 20]]).unwrap();
        }
        let before = log.bytes();
        let segments = log.segments.clone();
        assert!(segments.len() > 4);
        // Everything below offset 17 is consumed: segments ending at or before it go.
        let (removed, bytes) = log.remove_before(17).unwrap();
        assert!(removed > 0 && bytes > 0);
        assert_eq!(log.bytes(), before - bytes);
        assert!(log.first_offset() <= 17, "the segment holding 17 stays");
        let kept: Vec<u64> = log.read_from(17).map(|r| r.unwrap().0).collect();
        assert_eq!(kept, (17..40).collect::<Vec<_>>());
        // Asking for removed records starts at the oldest kept.
        let first = log.first_offset();
        let from_zero: Vec<u64> = log.read_from(0).map(|r| r.unwrap().0).collect();
        assert_eq!(from_zero, (first..40).collect::<Vec<_>>());
        // The active segment is never removed, whatever the offset.
        log.remove_before(u64::MAX).unwrap();
        assert_eq!(log.segments.len(), 1);
        log.append(&[b"after"]).unwrap();
        drop(log);
        let (log, recovery) = Log::open(&dir.0, 100).unwrap();
        assert_eq!(recovery.records, 41);
        assert_eq!(log.first_offset(), *segments.last().unwrap());
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_back_and_reported() {
        let dir = Dir::new("torn");
        let (mut log, _) = Log::open(&dir.0, SEGMENT_BYTES_MAX).unwrap();
        log.append(&[b"first".as_slice(), b"second", b"third"])
            .unwrap();
        drop(log);
        let path = segment_path(&dir.0, 0);
        let length = fs::metadata(&path).unwrap().len();
        // A crash mid-write: the last record half there.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(length - 2)
            .unwrap();
        let (mut log, recovery) = Log::open(&dir.0, SEGMENT_BYTES_MAX).unwrap();
        assert_eq!(recovery.records, 2);
        assert_eq!(recovery.cut_bytes, HEADER_BYTES + 5 - 2);
        assert_eq!(recovery.cut_reason, Some("torn record payload"));
        assert_eq!(all(&log), vec![b"first".to_vec(), b"second".to_vec()]);
        // Appends go on after the cut.
        log.append(&[b"fourth"]).unwrap();
        drop(log);
        // A flipped bit in the last record: cut as corrupt.
        let mut bytes = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut bytes).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let (log, recovery) = Log::open(&dir.0, SEGMENT_BYTES_MAX).unwrap();
        assert_eq!(recovery.cut_reason, Some("checksum mismatch"));
        assert_eq!(all(&log), vec![b"first".to_vec(), b"second".to_vec()]);
    }

    #[test]
    fn corruption_in_a_sealed_segment_is_an_error_when_read() {
        let dir = Dir::new("sealed");
        let (mut log, _) = Log::open(&dir.0, 40).unwrap();
        for i in 0..10u8 {
            log.append(&[vec![i; 20]]).unwrap();
        }
        let first = segment_path(&dir.0, 0);
        let mut bytes = Vec::new();
        File::open(&first).unwrap().read_to_end(&mut bytes).unwrap();
        bytes[HEADER_BYTES as usize] ^= 1;
        fs::write(&first, &bytes).unwrap();
        let results: Vec<_> = log.read_from(0).collect();
        assert!(matches!(
            results[0],
            Err(LogError::Corrupt {
                offset: 0,
                reason: "checksum mismatch",
                ..
            })
        ));
        assert_eq!(results.len(), 1, "reading stops at the damage");
        // Records after the damaged segment are still readable from their own offset.
        assert_eq!(log.read_from(5).next().unwrap().unwrap().1, vec![5u8; 20]);
    }

    #[test]
    fn a_quarantined_segment_keeps_its_offsets_with_tombstones_for_the_damage() {
        let dir = Dir::new("quarantine");
        let (mut log, _) = Log::open(&dir.0, 100).unwrap();
        for i in 0..12u8 {
            log.append(&[vec![i; 20]]).unwrap();
        }
        let bases = log.segments.clone();
        assert!(bases.len() >= 3, "{bases:?}");
        let (base, next) = (bases[1], bases[2]);
        let segment = segment_path(&dir.0, base);
        let mut bytes = Vec::new();
        File::open(&segment)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        // The second record of the middle segment, its length garbled: no framing after it.
        bytes[28] ^= 0x7f;
        fs::write(&segment, &bytes).unwrap();
        let damaged = base + 1;
        assert!(matches!(
            log.read_from(0).find_map(Result::err),
            Some(LogError::Corrupt { offset, .. }) if offset == damaged
        ));
        let done = quarantine(&dir.0, damaged).unwrap();
        assert_eq!((done.kept, done.tombstones), (1, next - damaged));
        let mut kept = Vec::new();
        File::open(&done.original)
            .unwrap()
            .read_to_end(&mut kept)
            .unwrap();
        assert_eq!(kept, bytes, "the damaged original is kept");
        let all: Vec<(u64, Vec<u8>)> = log.read_from(0).map(Result::unwrap).collect();
        assert_eq!(all.len(), 12, "every offset reads again");
        for (offset, payload) in &all {
            let given_up = (damaged..next).contains(offset);
            assert_eq!(is_tombstone(payload), given_up, "record {offset}");
            if !given_up {
                assert_eq!(payload, &vec![u8::try_from(*offset).unwrap(); 20]);
            }
        }
        let active = *log.segments.last().unwrap();
        assert!(matches!(
            quarantine(&dir.0, active),
            Err(LogError::NotSealed(_))
        ));
    }

    #[test]
    fn a_live_log_reads_to_its_last_whole_record() {
        let dir = Dir::new("live");
        let (mut log, _) = Log::open(&dir.0, 30).unwrap();
        for i in 0..6u8 {
            log.append(&[vec![i; 9]]).unwrap();
        }
        // A write in progress at the end: half a header.
        let last = segment_path(&dir.0, *log.segments.last().unwrap());
        OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap()
            .write_all(&[5, 0])
            .unwrap();
        let seen: Vec<u64> = read(&dir.0, 2).unwrap().map(|r| r.unwrap().0).collect();
        assert_eq!(seen, vec![2, 3, 4, 5]);
        assert_eq!(read(&dir.0, 9).unwrap().count(), 0);
    }

    #[test]
    fn oversized_records_are_refused() {
        let dir = Dir::new("big");
        let (mut log, _) = Log::open(&dir.0, SEGMENT_BYTES_MAX).unwrap();
        let big = vec![0u8; RECORD_BYTES_MAX as usize + 1];
        assert!(matches!(log.append(&[big]), Err(LogError::TooLarge(_))));
        assert_eq!(log.next_offset(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Whatever byte a crash cuts the last segment at, reopening keeps exactly a prefix of
        /// what was appended: every whole record before the cut, nothing after it.
        #[test]
        fn any_cut_recovers_a_prefix(
            records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..30),
            cut in 0usize..2_000,
        ) {
            let dir = Dir::new("prop");
            let (mut log, _) = Log::open(&dir.0, SEGMENT_BYTES_MAX).unwrap();
            log.append(&records).unwrap();
            drop(log);
            let path = segment_path(&dir.0, 0);
            let length = fs::metadata(&path).unwrap().len() as usize;
            let keep = cut % (length + 1);
            OpenOptions::new().write(true).open(&path).unwrap().set_len(keep as u64).unwrap();
            let (log, recovery) = Log::open(&dir.0, SEGMENT_BYTES_MAX).unwrap();
            let recovered = all(&log);
            prop_assert!(recovered.len() <= records.len());
            prop_assert_eq!(&recovered[..], &records[..recovered.len()]);
            let whole: usize = records[..recovered.len()].iter().map(|r| r.len() + 8).sum();
            prop_assert_eq!(recovery.cut_bytes as usize, keep - whole);
            prop_assert!(keep - whole < records.get(recovered.len()).map_or(1, |r| r.len() + 8));
        }
    }
}
