//! Shared helpers of the end-to-end tests: the real binaries, started as a user starts them,
//! spoken to over real HTTP, with their files in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use arrow_array::cast::AsArray as _;

pub mod fault;
pub mod http;
pub mod stack;

/// The repository's root (read at run time, so a moved checkout still finds its files).
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    Path::new(&manifest)
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// Path of the `tollgate` binary of this workspace, built (once per test process) if needed.
pub fn tollgate_bin() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build("tollgate-gateway", "tollgate"))
        .clone()
}

/// Path of the `tollgate-loadtest` binary (mock provider), built if needed.
pub fn loadtest_bin() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build("tollgate-loadtest", "tollgate-loadtest"))
        .clone()
}

fn build(package: &str, binary: &str) -> Result<PathBuf, String> {
    // Test executables live in <target>/<profile>/deps/; the binary one level up.
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("test executable has no profile directory")?
        .to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", package, "--bin", binary]);
    if release {
        build.arg("--release");
    }
    let status = build
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build of {binary} failed: {status}"));
    }
    let bin = profile_dir.join(format!("{binary}{}", std::env::consts::EXE_SUFFIX));
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("{} was not built", bin.display()))
    }
}

/// A fresh temporary directory for one test, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/tollgate-<name>-<pid>-<n>`.
    pub fn new(name: &str) -> Result<TempDir, String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tollgate-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A decimal amount of the rate card's currency, as the gateway writes it ("0.000123"), in
/// nano-units.
pub fn nanos(decimal: &str) -> u64 {
    let (whole, fraction) = decimal.split_once('.').unwrap_or((decimal, ""));
    let padded = format!("{fraction:0<9}");
    whole.parse::<u64>().unwrap() * 1_000_000_000 + padded[..9].parse::<u64>().unwrap()
}

/// A small file's text (at most 64 MiB: test outputs, reports).
pub fn read_text(path: &Path) -> String {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 << 20).read_to_string(&mut text))
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text
}

/// The first row of `sql` run by DuckDB (the Python package in `TOLLGATE_PYTHON`'s environment,
/// which tests/run-all makes), each value as text. `None`, loudly, when no such Python is
/// configured, except under `CI=true`, where that is a failure.
pub fn duckdb_row(sql: &str) -> Option<Vec<String>> {
    let Ok(python) = std::env::var("TOLLGATE_PYTHON") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: TOLLGATE_PYTHON must name a Python with duckdb (tests/run-all makes one)"
        );
        eprintln!(
            "\n*** SKIPPED the DuckDB check: set TOLLGATE_PYTHON to a Python with duckdb, or run tests/run-all ***\n"
        );
        return None;
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import duckdb, json, sys; print(json.dumps([str(v) for v in duckdb.connect().execute(sys.argv[1]).fetchone()]))",
            sql,
        ])
        .output()
        .unwrap_or_else(|e| panic!("running DuckDB: {e}"));
    assert!(
        out.status.success(),
        "DuckDB: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: Vec<String> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("DuckDB printed {:?}: {e}", out.stdout));
    Some(row)
}

/// Every `(event_id, cost)` in the Parquet files under `data/usage`.
pub fn parquet_rows(data: &Path) -> Vec<(String, i128)> {
    let mut found = Vec::new();
    let mut stack = vec![data.join("usage")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let file = std::fs::File::open(&path).unwrap();
                for batch in
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                        .unwrap()
                        .build()
                        .unwrap()
                {
                    let batch = batch.unwrap();
                    let ids = batch.column_by_name("event_id").unwrap().as_string::<i32>();
                    let cost = batch
                        .column_by_name("cost")
                        .unwrap()
                        .as_primitive::<arrow_array::types::Decimal128Type>();
                    for row in 0..batch.num_rows() {
                        found.push((ids.value(row).to_owned(), cost.value(row)));
                    }
                }
            }
        }
    }
    found
}
