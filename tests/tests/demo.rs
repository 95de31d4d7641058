//! `tollgate demo`: the newcomer's first command runs everything in one go, balances its books,
//! prints the chargeback and leaves nothing running.

use std::net::TcpStream;
use std::process::Command;

use tollgate_tests::{TempDir, read_text, tollgate_bin};

fn demo(data: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(tollgate_bin().unwrap())
        .arg("demo")
        .arg("--data")
        .arg(data)
        .args(extra)
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .output()
        .unwrap()
}

/// The `http://ADDR` printed after `label` in the demo's banner.
fn printed_address(stdout: &str, label: &str) -> std::net::SocketAddr {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in {stdout}"));
    let url = line
        .split_whitespace()
        .nth(if label == "mock" { 2 } else { 1 })
        .unwrap();
    url.trim_start_matches("http://").parse().unwrap()
}

#[test]
fn the_demo_runs_everything_in_one_go_and_leaves_nothing_running() {
    let temp = TempDir::new("demo").unwrap();
    let data = temp.path().join("demo");
    let run = demo(&data, &["--seconds", "8", "--agents", "400"]);
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The fleet ran, one allocation ran out, the books balanced.
    assert!(stdout.contains("**Balanced**"), "{stdout}");
    assert!(
        stdout.contains("ci-triage-demo ran out of budget"),
        "{stdout}"
    );
    // The chargeback by team and by model, read back from the Parquet files.
    for heading in ["Chargeback by team", "Chargeback by model"] {
        assert!(stdout.contains(heading), "{stdout}");
    }
    for row in [
        "research",
        "platform",
        "support",
        "gpt-4o-mini",
        "claude-sonnet-4-5",
        "TOTAL",
    ] {
        assert!(stdout.contains(row), "{row}: {stdout}");
    }
    assert!(stdout.contains("duckdb -c"), "{stdout}");
    let parquet: Vec<_> = walk(&data.join("data").join("usage"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(!parquet.is_empty());
    for file in [
        "tollgate.toml",
        "rates.toml",
        "loadtest/report.json",
        "loadtest/latency.svg",
    ] {
        assert!(data.join(file).is_file(), "{file}");
    }
    // Nothing outlives the command: the gateway's and the mock's ports are closed.
    for label in ["gateway", "mock"] {
        let address = printed_address(&stdout, label);
        assert!(
            TcpStream::connect(address).is_err(),
            "{label} still listens"
        );
    }
    // A second run clears the first one's folder; a folder of anything else is refused.
    let again = demo(&data, &["--seconds", "1", "--agents", "20"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let foreign = temp.path().join("precious");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "keep me").unwrap();
    let refused = demo(&foreign, &["--seconds", "1"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"));
    assert_eq!(read_text(&foreign.join("notes.txt")), "keep me");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}
