//! The real `tollgate` binary's own checks: rate cards and configs are validated with the file,
//! line and field of any fault, and a non-zero exit.

use std::path::PathBuf;
use std::process::{Command, Output};

use tollgate_tests::{TempDir, tollgate_bin};

fn example_card() -> PathBuf {
    tollgate_tests::repo_root().join("gateway/config/rates.example.toml")
}

fn run(args: &[&str]) -> Output {
    Command::new(tollgate_bin().unwrap())
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_example_card_is_valid_and_versions_apply_forward() {
    let card = example_card();
    let out = run(&["rate-card", "check", card.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("valid, 2 version(s), currency USD"),
        "{stdout}"
    );
    assert!(stdout.contains("2026-03-01T00:00:00.000Z"), "{stdout}");

    let at = |instant: &str| {
        run(&[
            "rate-card",
            "check",
            card.to_str().unwrap(),
            "--at",
            instant,
        ])
    };
    let feb = at("2026-02-15T00:00:00Z");
    let mar = at("2026-03-01T00:00:00Z");
    let line = |out: &Output| {
        text(&out.stdout)
            .lines()
            .find(|l| l.trim_start().starts_with("openai/gpt-4o-mini"))
            .map(str::to_owned)
            .unwrap()
    };
    assert!(line(&feb).contains("0.15"), "{}", line(&feb));
    assert!(line(&mar).contains("0.12"), "{}", line(&mar));

    let before = at("2025-12-31T23:59:59Z");
    assert!(!before.status.success());
    assert!(
        text(&before.stderr).contains("no version is in force"),
        "{}",
        text(&before.stderr)
    );
}

#[test]
fn bad_cards_name_file_line_and_field() {
    let dir = TempDir::new("ratecard").unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "float.toml",
            "default_max_output_tokens = 1\n[[version]]\nid = \"v\"\neffective_from = 2026-01-01T00:00:00Z\n[[version.model]]\nname = \"openai/gpt-4o\"\ninput_per_mtok = 2.5\noutput_per_mtok = \"1\"\n",
            ":7:18: `version[0].model[0].input_per_mtok`",
        ),
        (
            "syntax.toml",
            "default_max_output_tokens = 1\n[[version]\n",
            ":2:",
        ),
        (
            "model.toml",
            "default_max_output_tokens = 1\n[[version]]\nid = \"v\"\neffective_from = 2026-01-01T00:00:00Z\n[[version.model]]\nname = \"gpt-4o\"\ninput_per_mtok = \"1\"\noutput_per_mtok = \"1\"\n",
            "`version[0].model[0].name`",
        ),
        ("binary.toml", "\u{0}\u{1}\u{2}garbage", ":1:"),
    ];
    for (name, body, expect) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let out = run(&["rate-card", "check", path.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{name}{expect}")) || stderr.contains(expect),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(name), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    let missing = run(&[
        "rate-card",
        "check",
        dir.path().join("absent.toml").to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("absent.toml"),
        "{}",
        text(&missing.stderr)
    );
}

#[test]
fn an_oversized_card_is_refused_before_parsing() {
    let dir = TempDir::new("ratecard-big").unwrap();
    let path = dir.path().join("huge.toml");
    let mut body = String::from("default_max_output_tokens = 1\n");
    while body.len() <= 17 * 1024 * 1024 {
        body.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&path, body).unwrap();
    let out = run(&["rate-card", "check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("larger than"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn serve_refuses_a_broken_config_naming_the_field() {
    let dir = TempDir::new("bad-config").unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        "rate_card = \"rates.toml\"\n\n[[provider]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"not a url\"\n",
    )
    .unwrap();
    let out = run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("tollgate.toml:6:") && stderr.contains("provider[0].base_url"),
        "{stderr}"
    );
    // A provider whose key variable is unset stops start-up too, naming the variable only.
    std::fs::write(
        &config,
        "rate_card = \"rates.toml\"\n\n[[provider]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"TOLLGATE_TEST_UNSET_KEY\"\n",
    )
    .unwrap();
    std::fs::copy(example_card(), dir.path().join("rates.toml")).unwrap();
    let out = Command::new(tollgate_bin().unwrap())
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("TOLLGATE_TEST_UNSET_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("TOLLGATE_TEST_UNSET_KEY"),
        "{}",
        text(&out.stderr)
    );
}
