//! `tollgate import slurm|opencost|storage` against a running gateway: real `sacct` and
//! OpenCost output formats and a storage CSV become booked records once (a second import
//! changes nothing); a bad file exits non-zero naming its lines and imports nothing; and
//! `tollgate report` then shows tokens, GPU-hours, core-hours and GB-months side by side, from
//! the Parquet files, equal to the budget table.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tollgate_engine::UnixMs;
use tollgate_tests::http::post_json;
use tollgate_tests::stack::{ADMIN_TOKEN, ORG, Stack};
use tollgate_tests::tollgate_bin;

const IMPORT_ORG: &str = r#"
[[allocation]]
name = "hpc"
project = "chatbot"

[[allocation]]
name = "ml-serving"
project = "chatbot"
"#;

fn tollgate(stack: &Stack, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(tollgate_bin().unwrap());
    command
        .args(args)
        .env("TOLLGATE_URL", format!("http://{}", stack.address()))
        .env_remove("TOLLGATE_METERING_KEY")
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Yesterday's date, `YYYY-MM-DD`: the jobs ran and ended before now.
fn yesterday() -> String {
    let ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let c = UnixMs(ms - 86_400_000).to_civil();
    format!("{:04}-{:02}-{:02}", c.year, c.month, c.day)
}

fn this_month() -> String {
    let ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let c = UnixMs(ms).to_civil();
    format!("{:04}-{:02}", c.year, c.month)
}

fn this_month_start() -> i64 {
    let ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let month = tollgate_engine::Period::Month;
    month.start(month.index(UnixMs(ms))).unwrap().0
}

/// The cost of `allocation`'s events at or after `since`, from the log.
fn costs(stack: &Stack, allocation: &str, since: i64) -> u64 {
    stack
        .events()
        .iter()
        .filter(|e| e["allocation"] == allocation && e["ts_ms"].as_i64().unwrap() >= since)
        .map(|e| e["cost_nanos"].as_u64().unwrap())
        .sum()
}

fn resource_events(stack: &Stack) -> usize {
    stack
        .events()
        .iter()
        .filter(|e| e["kind"] != "tokens")
        .count()
}

/// `sacct --parsable2` output (`TZ=UTC`): a two-node GPU job with its steps, an array job's
/// finished task and pending range, a running job, and a job cancelled before it started.
fn sacct(day: &str) -> String {
    format!(
        "JobID|User|Account|Partition|AllocTRES|ElapsedRaw|Start|End|State|Cluster\n\
         4242|ada|ml-lab|h100|billing=16,cpu=16,gres/gpu:h100=8,gres/gpu=8,mem=512G,node=2|5400|{day}T09:00:00|{day}T10:30:00|COMPLETED|hpc1\n\
         4242.batch||ml-lab||cpu=8,gres/gpu=4,mem=256G,node=1|5400|{day}T09:00:00|{day}T10:30:00|COMPLETED|hpc1\n\
         4242.extern||ml-lab||billing=16,cpu=16,gres/gpu=8,mem=512G,node=2|5400|{day}T09:00:00|{day}T10:30:00|COMPLETED|hpc1\n\
         4242.0||ml-lab||cpu=16,gres/gpu=8,mem=512G,node=2|5390|{day}T09:00:05|{day}T10:29:55|COMPLETED|hpc1\n\
         4300_1|bob|ml-lab|cpu|billing=4,cpu=4,mem=16G,node=1|3600|{day}T11:00:00|{day}T12:00:00|COMPLETED|hpc1\n\
         4300_[2-9%2]|bob|ml-lab|cpu||0|Unknown|Unknown|PENDING|hpc1\n\
         4500|dee|ml-lab|h100|billing=8,cpu=8,gres/gpu=4,mem=128G,node=1|7200|{day}T14:00:00|Unknown|RUNNING|hpc1\n\
         4501|dee|ml-lab|h100||0|None|{day}T14:05:00|CANCELLED by 1000|hpc1\n"
    )
}

#[test]
fn imports_book_once_refuse_bad_files_whole_and_the_report_shows_everything_side_by_side() {
    let mut stack = Stack::start(
        "import",
        &format!("{ORG}\n{IMPORT_ORG}"),
        "[ledger]\nrecord_window_days = 3650\n",
    );
    let dir = stack.path().to_owned();
    let day = yesterday();

    // Slurm: 12 GPU-hours and 24 + 4 core-hours, the Slurm account mapped to `hpc`.
    let slurm = write(&dir, "sacct.txt", &sacct(&day));
    let args = ["import", "slurm", slurm.as_str(), "--map", "ml-lab=hpc"];
    let out = ok(&tollgate(&stack, &args, &[]));
    assert!(out.contains("3 record(s) read"), "{out}");
    assert!(out.contains("skipped 3: job steps"), "{out}");
    assert!(out.contains("skipped 2: jobs not finished"), "{out}");
    assert!(out.contains("skipped 1: jobs that used nothing"), "{out}");
    // 12 GPU-hours at 2.00, 28 core-hours at 0.035.
    assert!(
        out.contains("booked 3 (24.98 USD), 0 already booked"),
        "{out}"
    );
    let spent = stack.spent_nanos("hpc");
    assert_eq!(spent, costs(&stack, "hpc", this_month_start()));
    // Again: the same jobs are the same records.
    let out = ok(&tollgate(&stack, &args, &[]));
    assert!(
        out.contains("booked 0 (0.00 USD), 3 already booked"),
        "{out}"
    );
    assert_eq!(stack.spent_nanos("hpc"), spent);
    assert_eq!(resource_events(&stack), 3);

    // A bad file: every bad line named, non-zero exit, nothing sent.
    let bad = sacct(&day)
        .replace("|5400|", "|ninety|")
        .replace("PENDING", "EXPLODED");
    let bad = write(&dir, "bad-sacct.txt", &bad.replace("4242|", "9242|"));
    let out = tollgate(
        &stack,
        &["import", "slurm", bad.as_str(), "--map", "ml-lab=hpc"],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "line 2: ElapsedRaw `ninety`",
        "line 7: unknown job state `EXPLODED`",
        "nothing was imported",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in {stderr}");
    }
    assert_eq!(resource_events(&stack), 3);
    // Good lines the gateway refuses (an account that is no allocation): found by the dry run
    // before anything is booked, even in a later batch, and named by file and line.
    let unmapped = write(
        &dir,
        "unmapped.txt",
        &sacct(&day)
            .replace("4242|", "5242|")
            .replace("4300_1|bob|ml-lab", "5300_1|bob|physics"),
    );
    let out = tollgate(
        &stack,
        &[
            "import",
            "slurm",
            unmapped.as_str(),
            "--map",
            "ml-lab=hpc",
            "--batch-records",
            "1",
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{unmapped}:6: the gateway refused this record")),
        "{stderr}"
    );
    assert!(stderr.contains("unknown allocation `physics`"), "{stderr}");
    assert_eq!(
        resource_events(&stack),
        3,
        "nothing of that file was booked"
    );

    // OpenCost: a day of two namespaces and the idle entry, with a metering key.
    let (meter, _) = stack.create_key("open", json!({"scopes": ["metering"]}));
    let window = format!("{{\"start\": \"{day}T00:00:00Z\", \"end\": \"{day}T23:59:59Z\"}}");
    let opencost = format!(
        r#"{{"code": 200, "data": [{{
  "__idle__": {{"name": "__idle__", "properties": {{"cluster": "cluster-one"}}, "window": {window},
               "cpuCoreHours": 100.5, "gpuHours": 0, "totalCost": 3.2}},
  "ml-serving": {{"name": "ml-serving",
                 "properties": {{"cluster": "cluster-one", "namespace": "ml-serving"}},
                 "window": {window}, "start": "{day}T00:00:00Z", "end": "{day}T23:59:59Z",
                 "minutes": 1439.98, "cpuCores": 4.000000000000001, "cpuCoreHours": 96.00000000000003,
                 "cpuCost": 2.27, "gpuCount": 2, "gpuHours": 48, "gpuCost": 70.8,
                 "pvBytes": 107374182400, "pvByteHours": 2576980377600, "pvCost": 0.39,
                 "ramByteHours": 824633720832, "ramCost": 0.96, "totalCost": 74.42}},
  "batch": {{"name": "batch", "properties": {{"cluster": "cluster-one", "namespace": "batch"}},
            "window": {window}, "cpuCoreHours": 1.2e+01, "gpuHours": 0, "pvByteHours": null}}
}}]}}"#
    );
    let opencost = write(&dir, "opencost.json", &opencost);
    let args = [
        "import",
        "opencost",
        opencost.as_str(),
        "--map",
        "batch=hpc",
        "--json",
    ];
    let out: Value = serde_json::from_str(&ok(&tollgate(
        &stack,
        &args,
        &[("TOLLGATE_METERING_KEY", &meter)],
    )))
    .unwrap();
    assert_eq!(
        (out["booked"].as_u64(), out["records"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(
        out["skipped"]["OpenCost's own entries (__idle__, __unallocated__, __unmounted__)"],
        1
    );
    let out: Value = serde_json::from_str(&ok(&tollgate(
        &stack,
        &args,
        &[("TOLLGATE_METERING_KEY", &meter)],
    )))
    .unwrap();
    assert_eq!(
        (out["booked"].as_u64(), out["duplicates"].as_u64()),
        (Some(0), Some(4))
    );
    // A key without the scope is refused.
    let (plain, _) = stack.create_key("open", json!({}));
    let out = tollgate(&stack, &args, &[("TOLLGATE_METERING_KEY", &plain)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("metering"));

    // Storage: this month's GB-months by project.
    let month = this_month();
    let csv = write(
        &dir,
        "storage.csv",
        &format!(
            "month,project,gb_months,cluster,tier\n{month},chatbot,1250.5,lustre1,scratch\n{month},\"ml serving\",80,lustre1,project\n"
        ),
    );
    let args = [
        "import",
        "storage",
        csv.as_str(),
        "--map",
        "chatbot=hpc",
        "--map",
        "ml serving=ml-serving",
    ];
    let out = ok(&tollgate(&stack, &args, &[]));
    assert!(out.contains("booked 2"), "{out}");
    let bad_csv = write(
        &dir,
        "bad.csv",
        &format!("month,project,gb_months\n{month},chatbot,-3\n{month},x,1.0000001\n"),
    );
    let out = tollgate(&stack, &["import", "storage", bad_csv.as_str()], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2: gb_months `-3` is negative") && stderr.contains("line 3:"),
        "{stderr}"
    );
    let dry_args = [&args[..], &["--dry-run"]].concat();
    let dry = ok(&tollgate(&stack, &dry_args, &[]));
    assert!(dry.contains("dry run: 0 would be booked"), "{dry}");

    // A model call on the same allocation, then the statement.
    let (key, _) = stack.create_key("hpc", json!({}));
    let chat = json!({"model": "openai/gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        post_json(stack.address(), "/v1/chat/completions", &key, &chat).status,
        200
    );
    // The live table holds this month; the events hold everything (yesterday may be last
    // month).
    assert_eq!(
        stack.spent_nanos("hpc"),
        costs(&stack, "hpc", this_month_start())
    );
    assert_eq!(
        stack.spent_nanos("ml-serving"),
        costs(&stack, "ml-serving", this_month_start())
    );
    let spent_hpc = costs(&stack, "hpc", i64::MIN);
    let spent_serving = costs(&stack, "ml-serving", i64::MIN);
    stack.stop(); // the last Parquet roll runs at shutdown
    let data = stack.path().join("data");
    let report = |args: &[&str]| {
        let out = Command::new(tollgate_bin().unwrap())
            .args(["report", "--data"])
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        ok(&out)
    };
    let by_allocation: Value =
        serde_json::from_str(&report(&["--by", "allocation", "--format", "json"])).unwrap();
    assert_eq!(by_allocation["currency"], "USD");
    let row = |name: &str| {
        by_allocation["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["allocation"] == name)
            .unwrap()
            .clone()
    };
    let hpc = row("hpc");
    // 12 GPU-hours and 28 + 12 core-hours; 1250.5 GB-months; and the model call's tokens.
    assert_eq!(hpc["gpu_hours"], "12");
    assert_eq!(hpc["core_hours"], "40");
    assert_eq!(hpc["gb_months"], "1250.5");
    assert_eq!(hpc["compute_cost"], "25.40");
    assert_eq!(hpc["storage_cost"], "12.505");
    assert!(hpc["tokens_in"].as_u64().unwrap() > 0);
    let nanos = |v: &Value| v["cost_nanos"].as_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(nanos(&hpc), spent_hpc);
    let serving = row("ml-serving");
    assert_eq!(
        (
            serving["gpu_hours"].as_str(),
            serving["core_hours"].as_str()
        ),
        (Some("48"), Some("96"))
    );
    // 2576980377600 byte-hours in GB-months (3.530110), rounded once; then 80 from the CSV.
    assert_eq!(serving["gb_months"], "83.53011");
    assert_eq!(nanos(&serving), spent_serving);
    let by_kind = report(&["--by", "kind"]);
    for kind in ["compute", "storage", "tokens"] {
        assert!(by_kind.lines().any(|l| l.starts_with(kind)), "{by_kind}");
    }
    assert!(by_kind.starts_with("currency USD\n"), "{by_kind}");
    let focus = report(&["--by", "team", "--format", "focus"]);
    for category in [",Compute,", ",Storage,", ",AI and Machine Learning,"] {
        assert!(focus.contains(category), "{category} missing in {focus}");
    }
}
