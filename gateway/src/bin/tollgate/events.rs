//! `tollgate events dump`: the durable usage-event log, read from a folder and written to
//! stdout as JSON lines in log order.
//!
//! It reads the log's files directly, so it works on a running gateway's log too; each record's
//! payload is written as it is stored, one record a line.

use std::io::Write as _;

/// Writes every event of the log in `dir` from offset `from` on, one per line.
pub fn dump(dir: &std::path::Path, from: u64) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for record in tollgate_sink::log::read(dir, from)? {
        let (_, payload) = record?;
        out.write_all(&payload)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
