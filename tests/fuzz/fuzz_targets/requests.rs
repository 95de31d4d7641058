//! A client's request body, as the gateway reads it: the top-level scan every call goes
//! through, the walk over its strings that counts a prompt, then every provider's translation
//! of an OpenAI chat request, and the loop guard's fingerprint of the call. None may panic; a translation either fails with its reason or
//! writes a JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_gateway::http::route::Api;
use tollgate_gateway::providers::Serve;

mod common;

fuzz_target!(|data: &[u8]| {
    let _ = tollgate_gateway::json_scan::scan(data, tollgate_gateway::proxy::WANTED);
    // The prompt's text, read by walking the body when a provider reports no usage.
    let _ = tollgate_gateway::providers::text::prompt_text(data);
    // What the loop detector knows the call by: its last messages and the answer it carries.
    let _ = common::guards().print("openai/gpt-4o", data);
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
