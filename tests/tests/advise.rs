//! `tollgate advise` on the Parquet files a gateway wrote: calls that re-send one long prompt
//! carry one prompt prefix to Parquet (DuckDB reads it), and the advice names the short
//! answers from gpt-4o and the re-sent prefix with the amounts the card gives, worked out
//! here from the answers' usage and the prices and adjustment the admin API publishes.

use std::process::Command;

use serde_json::{Value, json};
use tollgate_tests::http::post_json;
use tollgate_tests::stack::{ORG, Stack};
use tollgate_tests::{duckdb_row, tollgate_bin};

/// A price per million tokens (`"2.50"`) in nano-units.
fn nanos(price: &str) -> u128 {
    let (whole, frac) = price.split_once('.').unwrap_or((price, ""));
    let frac = format!("{frac:0<9}");
    whole.parse::<u128>().unwrap() * 1_000_000_000 + frac[..9].parse::<u128>().unwrap()
}

/// The billed cost of `terms` (tokens, nanos per million) with an adjustment of `ppm`, as the
/// rate card rounds: once, upward.
fn billed(terms: &[(u64, u128)], ppm: i64) -> u128 {
    let sum: u128 = terms.iter().map(|&(t, p)| u128::from(t) * p).sum();
    let numerator = u128::try_from(1_000_000 + i128::from(ppm)).unwrap();
    (sum * numerator).div_ceil(1_000_000_000_000)
}

#[test]
fn advice_prices_short_answers_and_resent_prefixes_from_the_gateways_files() {
    let mut stack = Stack::start("advise", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    let models = stack.admin("GET", "/admin/v1/models", None).json();
    let price = |model: &str, field: &str| {
        let entry = models["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == model)
            .unwrap_or_else(|| panic!("{model} in {models}"));
        nanos(entry[field].as_str().unwrap())
    };
    let allocations = stack.admin("GET", "/admin/v1/allocations", None).json();
    let ppm = allocations["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "open")
        .unwrap()["price_adjustment_ppm"]
        .as_i64()
        .unwrap();

    // One long system prompt re-sent three times (answers of 300 tokens: not short), then two
    // short answers from gpt-4o.
    let system = "You review pull requests for a payments service. ".repeat(100);
    let mut resent = Vec::new();
    for n in 0..3 {
        let body = json!({"model": "openai/gpt-4o", "max_tokens": 300, "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": format!("review change {n}")}]});
        let answer = post_json(stack.address(), "/v1/chat/completions", &key, &body);
        assert_eq!(answer.status, 200, "{}", answer.text());
        resent.push(answer.json()["usage"].clone());
    }
    let mut short = Vec::new();
    for n in 0..2 {
        let body = json!({"model": "openai/gpt-4o", "max_tokens": 8, "messages": [
            {"role": "user", "content": format!("yes or no: {n}?")}]});
        let answer = post_json(stack.address(), "/v1/chat/completions", &key, &body);
        assert_eq!(answer.status, 200, "{}", answer.text());
        short.push(answer.json()["usage"].clone());
    }
    stack.stop();
    let data = stack.path().join("data");

    if let Some(row) = duckdb_row(&format!(
        "select count(distinct prompt_prefix), count(prompt_prefix), count(*) \
         from read_parquet('{}/usage/**/*.parquet', union_by_name = true)",
        data.display()
    )) {
        assert_eq!(row, ["1", "3", "5"], "one prefix, on the three long calls");
    }

    let out = Command::new(tollgate_bin().unwrap())
        .args(["advise", "--by", "allocation", "--format", "json", "--data"])
        .arg(&data)
        .arg("--rate-card")
        .arg(stack.path().join("rates.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let advice: Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = |kind: &str| {
        advice["advice"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["advice"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {advice:#}"))
            .clone()
    };
    let amount = |v: &Value| v.as_str().unwrap().parse::<u128>().unwrap();
    let tokens = |usage: &Value, field: &str| usage[field].as_u64().unwrap();
    let (input, cached, output) = (
        price("openai/gpt-4o", "input_per_mtok"),
        price("openai/gpt-4o", "cached_input_per_mtok"),
        price("openai/gpt-4o", "output_per_mtok"),
    );

    // Short answers: their cost less the same usage on gpt-4o-mini.
    let cheaper = line("cheaper_model");
    assert_eq!(
        (&cheaper["allocation"], &cheaper["about"], &cheaper["calls"]),
        (
            &json!("open"),
            &json!("openai/gpt-4o -> openai/gpt-4o-mini"),
            &json!(2)
        ),
        "{cheaper}"
    );
    let mini = |usage: &Value| {
        billed(
            &[
                (
                    tokens(usage, "prompt_tokens"),
                    price("openai/gpt-4o-mini", "input_per_mtok"),
                ),
                (
                    tokens(usage, "completion_tokens"),
                    price("openai/gpt-4o-mini", "output_per_mtok"),
                ),
            ],
            ppm,
        )
    };
    let full = |usage: &Value| {
        billed(
            &[
                (tokens(usage, "prompt_tokens"), input),
                (tokens(usage, "completion_tokens"), output),
            ],
            ppm,
        )
    };
    let spent: u128 = short.iter().map(full).sum();
    assert_eq!(amount(&cheaper["spent_nanos"]), spent, "{cheaper}");
    let saving: u128 = short.iter().map(|usage| full(usage) - mini(usage)).sum();
    assert_eq!(amount(&cheaper["could_save_nanos"]), saving, "{cheaper}");

    // The second and third long calls could have read the prefix's 1,024 tokens cached.
    let caching = line("prompt_caching");
    assert_eq!(
        (&caching["about"], &caching["calls"]),
        (&json!("openai/gpt-4o"), &json!(2))
    );
    let saving: u128 = resent[1..]
        .iter()
        .map(|usage| {
            let (p, c) = (
                tokens(usage, "prompt_tokens"),
                tokens(usage, "completion_tokens"),
            );
            billed(&[(p, input), (c, output)], ppm)
                - billed(&[(p - 1_024, input), (1_024, cached), (c, output)], ppm)
        })
        .sum();
    assert_eq!(amount(&caching["could_save_nanos"]), saving, "{caching}");
    let total: u128 = advice["advice"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| amount(&a["could_save_nanos"]))
        .sum();
    assert_eq!(amount(&advice["could_save_nanos"]), total);

    // The table and CSV say the same.
    let table = Command::new(tollgate_bin().unwrap())
        .args(["advise", "--data"])
        .arg(&data)
        .arg("--rate-card")
        .arg(stack.path().join("rates.toml"))
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("currency USD\nteam "), "{table}");
    assert!(
        table.contains("cheaper_model") && table.lines().last().unwrap().starts_with("TOTAL"),
        "{table}"
    );
    let refused = Command::new(tollgate_bin().unwrap())
        .args(["advise", "--by", "model", "--data"])
        .arg(&data)
        .arg("--rate-card")
        .arg(stack.path().join("rates.toml"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("choose team, project, allocation or agent")
    );
}
