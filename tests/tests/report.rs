//! Chargeback from the Parquet files the gateway wrote: totals per dimension equal the events
//! and the budget table, to the nano.

use std::process::Command;

use serde_json::{Value, json};
use tollgate_tests::http::post_json;
use tollgate_tests::stack::{ORG, Stack};
use tollgate_tests::tollgate_bin;

fn report(data: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(tollgate_bin().unwrap())
        .arg("report")
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_report_totals_equal_the_events_and_the_budget_table() {
    let mut stack = Stack::start("report", ORG, "");
    let (open, _) = stack.create_key("open", json!({"user": "ada"}));
    let (only, _) = stack.create_key("openai-only", json!({"user": "bob"}));
    for (key, model, n) in [
        (&open, "openai/gpt-4o-mini", 3),
        (&open, "anthropic/claude-sonnet-4-5", 2),
        (&only, "openai/gpt-4o", 4),
    ] {
        for _ in 0..n {
            let body = json!({"model": model, "max_tokens": 7, "messages": [{"role": "user", "content": "hi"}]});
            assert_eq!(
                post_json(stack.address(), "/v1/chat/completions", key, &body).status,
                200
            );
        }
    }
    assert_eq!(
        post_json(
            stack.address(),
            "/v1/chat/completions",
            "tg_bad",
            &json!({"model": "openai/gpt-4o"})
        )
        .status,
        401
    );
    let spent_open = stack.spent_nanos("open");
    let spent_only = stack.spent_nanos("openai-only");
    stack.stop(); // the last Parquet roll runs at shutdown
    let data = stack.path().join("data");

    let by_allocation: Value =
        serde_json::from_str(&report(&data, &["--by", "allocation", "--format", "json"])).unwrap();
    let nanos = |row: &Value| row["cost_nanos"].as_str().unwrap().parse::<u64>().unwrap();
    let rows = by_allocation["rows"].as_array().unwrap();
    let row = |name: Value| {
        rows.iter()
            .find(|r| r["allocation"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(nanos(&row(json!("open"))), spent_open);
    assert_eq!(nanos(&row(json!("openai-only"))), spent_only);
    assert_eq!(row(json!("open"))["events"], 5);
    assert!(
        rows.iter().all(|r| !r["allocation"].is_null()),
        "the call with an unknown key is counted in metrics, not an event: {rows:?}"
    );
    let events = stack.events();
    let total: u64 = events
        .iter()
        .map(|e| e["cost_nanos"].as_u64().unwrap())
        .sum();
    assert_eq!(nanos(&by_allocation["total"]), total);
    assert_eq!(by_allocation["total"]["events"], events.len());

    let by_model = report(&data, &["--by", "model", "--format", "csv"]);
    assert!(
        by_model.starts_with("model,events,cost,list_cost,tokens_in,tokens_out,token_cost,gpu_hours,core_hours,node_hours,compute_cost,gb_months,storage_cost\n"),
        "{by_model}"
    );
    assert!(by_model.contains("\nclaude-sonnet-4-5,2,"), "{by_model}");
    let table = report(&data, &["--by", "user"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("bob") && l.contains(" 4 ")),
        "{table}"
    );
    assert!(table.lines().last().unwrap().starts_with("TOTAL"));

    // The same rows as a Parquet file, exact decimals, read back as a data team would.
    let file = stack.path().join("by-allocation.parquet");
    report(
        &data,
        &[
            "--by",
            "allocation",
            "--format",
            "parquet",
            "--output",
            file.to_str().unwrap(),
        ],
    );
    {
        use arrow_array::cast::AsArray as _;
        use arrow_array::types::Decimal128Type;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let mut by_name = std::collections::BTreeMap::new();
        for batch in reader {
            let batch = batch.unwrap();
            let names = batch
                .column_by_name("allocation")
                .unwrap()
                .as_string::<i32>();
            let cost = batch
                .column_by_name("cost")
                .unwrap()
                .as_primitive::<Decimal128Type>();
            for i in 0..batch.num_rows() {
                let name =
                    (!arrow_array::Array::is_null(names, i)).then(|| names.value(i).to_owned());
                by_name.insert(name, cost.value(i));
            }
        }
        assert_eq!(by_name[&Some("open".to_owned())], i128::from(spent_open));
        assert_eq!(
            by_name[&Some("openai-only".to_owned())],
            i128::from(spent_only)
        );
        assert_eq!(by_name.len(), rows.len());
    }

    // A window after everything: nothing in it.
    let empty: Value = serde_json::from_str(&report(
        &data,
        &[
            "--by",
            "team",
            "--format",
            "json",
            "--from",
            "2099-01-01T00:00:00Z",
        ],
    ))
    .unwrap();
    assert_eq!(empty["total"]["events"], 0);
}

#[test]
fn bad_report_arguments_are_refused_clearly() {
    let dir = tollgate_tests::TempDir::new("report-bad").unwrap();
    for (args, expected) in [
        (&["--by", "galaxy"][..], "--by galaxy"),
        (&["--by", "team", "--format", "xml"][..], "--format xml"),
        (&["--by", "team", "--from", "yesterday"][..], "--from"),
        (
            &["--by", "team", "--format", "parquet"][..],
            "--output FILE",
        ),
        (
            &["--by", "team", "--output", "x.parquet"][..],
            "--output is for",
        ),
    ] {
        let out = Command::new(tollgate_bin().unwrap())
            .arg("report")
            .arg("--data")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // No files yet: an empty statement, not an error.
    let empty: Value =
        serde_json::from_str(&report(dir.path(), &["--by", "team", "--format", "json"])).unwrap();
    assert_eq!(empty["total"]["events"], 0);
}
