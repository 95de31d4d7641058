//! Every parser of outside bytes in the engine, fed arbitrary and adversarial input: each
//! returns a value or a clear error, and none panics.

use proptest::prelude::*;
use tollgate_engine::identity::test_directory;
use tollgate_engine::money::parse_decimal;
use tollgate_engine::time::parse_rfc3339;
use tollgate_engine::{
    Adjustment, AllowList, BudgetSpec, KeyId, KeyStore, ModelRef, Nanos, Period, RateCard, UnixMs,
    UsageEvent,
};

/// TOML-ish text: real keys and punctuation mixed with noise, so the parser goes deep.
fn tomlish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "[[version]]\n",
        "[[version.model]]\n",
        "[[version.resource]]\n",
        "[[version.adjustment]]\n",
        "id = \"v\"\n",
        "effective_from = 2026-01-01T00:00:00Z\n",
        "effective_from = 2026-13-01T00:00:00Z\n",
        "name = \"openai/gpt-4o\"\n",
        "name = \"x\"\n",
        "input_per_mtok = \"2.50\"\n",
        "input_per_mtok = 2.5\n",
        "output_per_mtok = \"99999999999999999999\"\n",
        "output_per_mtok = -1\n",
        "max_output_tokens = 18446744073709551615\n",
        "default_max_output_tokens = 10\n",
        "currency = \"USD\"\n",
        "unit = \"gpu_hour\"\n",
        "price_per_unit = \"0.1\"\n",
        "team = \"t\"\n",
        "project = \"p\"\n",
        "percent = \"-100.0001\"\n",
        "percent = \"12.5\"\n",
        "\"\n",
        "[",
        "]",
        "=",
        "\u{0}",
        "\u{feff}",
        "é",
        "\n",
        "#",
        "'''",
        "{ a = 1 }",
        "[a.b.c]\n",
    ]);
    prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn rate_cards_never_panic(text in tomlish()) {
        if let Err(e) = RateCard::from_toml(&text, "fuzz.toml") {
            prop_assert!(e.to_string().starts_with("fuzz.toml:"), "{e}");
        }
    }

    #[test]
    fn arbitrary_text_as_a_rate_card_never_panics(text in ".{0,400}") {
        let _ = RateCard::from_toml(&text, "fuzz.toml");
    }

    #[test]
    fn events_decode_or_refuse(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = UsageEvent::from_json(&bytes);
    }

    #[test]
    fn mutated_events_decode_or_refuse(at in 0usize..900, byte in any::<u8>()) {
        let mut json = UsageEvent::sample().to_json();
        let len = json.len();
        json[at % len] = byte;
        let _ = UsageEvent::from_json(&json);
    }

    #[test]
    fn names_amounts_and_instants_parse_or_refuse(text in "\\PC{0,80}") {
        let _ = ModelRef::parse(&text);
        let _ = KeyId::parse(&text);
        let _ = parse_decimal(&text, 9);
        let _ = Nanos::from_decimal(&text);
        let _ = Adjustment::from_percent(&text);
        let _ = parse_rfc3339(&text);
        let _ = AllowList::parse(&[text.as_str()]);
    }

    #[test]
    fn presented_keys_resolve_or_refuse(text in "(tg_)?[0-9a-f\\PC]{0,300}") {
        let (_dir, alloc) = test_directory(
            BudgetSpec::unlimited(Period::Month),
            BudgetSpec::unlimited(Period::Month),
            BudgetSpec::unlimited(Period::Month),
        ).unwrap();
        let store = KeyStore::new();
        let spec = tollgate_engine::KeySpec {
            user: "u".into(), agent: None, expires_at: None, models: AllowList::Any,
            limits: Default::default(), scopes: Default::default(), created_at: UnixMs(0), revoked: false,
            tight: None,
        };
        store.create(&alloc, spec, &[3u8; 20]).unwrap();
        prop_assert!(store.resolve(&text, UnixMs(0)).is_err());
    }
}
