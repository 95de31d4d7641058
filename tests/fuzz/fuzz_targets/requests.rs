//! A client's request body, as the gateway reads it: the top-level scan every call goes
//! through, the walk over its strings that counts a prompt, then every provider's translation
//! of an OpenAI chat request, the loop guard's fingerprint of the call and its prompt prefix. None may panic; a translation either fails with its reason or
//! writes a JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_gateway::http::route::Api;
use tollgate_gateway::providers::Serve;

mod common;

fuzz_target!(|data: &[u8]| {
    let scanned = tollgate_gateway::json_scan::scan(data, tollgate_gateway::proxy::WANTED);
    // The prompt's text, read by walking the body when a provider reports no usage.
    let _ = tollgate_gateway::providers::text::prompt_text(data);
    if let Ok(scanned) = scanned {
        // What the loop detector knows the call by (its last messages and the answer it
        // carries), and what the prompt begins with, from the spans the scan found.
        let span = |i: usize| scanned.members[i].as_ref().map(|m| m.value.clone());
        let context = span(8).or_else(|| span(9)).or_else(|| span(10));
        if let Some(context) = context.clone() {
            let _ = common::guards().print("openai/gpt-4o", data, context);
        }
        let prefixes = tollgate_gateway::prefix::Prefixes::with_key((1, 2));
        let _ = prefixes.of(data, span(7), context);
    }
    for provider in common::providers() {
        let Ok(Serve::Translated(translate)) = provider.serves(Api::ChatCompletions) else {
            continue;
        };
        if let Ok(body) = translate(data, "model", 4096) {
            let written: Result<serde_json::Map<String, serde_json::Value>, _> =
                serde_json::from_slice(&body);
            assert!(
                written.is_ok(),
                "{} wrote a body that is not a JSON object",
                provider.name
            );
        }
    }
});
