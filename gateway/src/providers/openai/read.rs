//! Reading OpenAI-style answers (chat completions, completions, embeddings, responses): usage
//! in both of OpenAI's spellings, and the text of streamed chunks.
//!
//! Normalisation (see [`TokenUsage`]): OpenAI reports `input` as every prompt token with the
//! cached ones a subset, and `output` with reasoning a subset, which is the engine's own form.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tollgate_engine::TokenUsage;

use crate::json_scan::{self, Member};
use crate::providers::read::{Observed, Pricer, Reading, Tally};
use crate::providers::text::Kept;

#[derive(Deserialize, Default)]
struct Details {
    #[serde(default)]
    cached_tokens: u64,
    #[serde(default)]
    reasoning_tokens: u64,
}

/// OpenAI's usage object, in both its chat and its responses spelling.
#[derive(Deserialize, Default)]
struct OpenAiUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
}

impl OpenAiUsage {
    fn normalise(&self) -> Option<TokenUsage> {
        let input = self.prompt_tokens.or(self.input_tokens)?;
        let output = self.completion_tokens.or(self.output_tokens).unwrap_or(0);
        let input_details = self
            .prompt_tokens_details
            .as_ref()
            .or(self.input_tokens_details.as_ref());
        let output_details = self
            .completion_tokens_details
            .as_ref()
            .or(self.output_tokens_details.as_ref());
        Some(TokenUsage::new(
            input,
            input_details.map_or(0, |d| d.cached_tokens),
            0,
            output,
            output_details.map_or(0, |d| d.reasoning_tokens),
        ))
    }
}

/// The usage in a whole OpenAI-style answer body.
#[must_use]
pub fn usage_of_body(body: &[u8]) -> Option<TokenUsage> {
    #[derive(Deserialize)]
    struct Answer {
        usage: Option<OpenAiUsage>,
    }
    serde_json::from_slice::<Answer>(body)
        .ok()?
        .usage?
        .normalise()
}

/// The members of a streamed chunk that metering reads: chat completions' and completions'
/// (the first four and `usage`) and the responses API's (`type`, its `delta`, and the final
/// `response`). Read by scanning, not parsing: a chunk comes every few tokens.
const CHUNK: [&str; 8] = [
    "id", "model", "created", "choices", "usage", "type", "delta", "response",
];

/// The members of one of a chunk's choices that metering reads.
const CHOICE: [&str; 3] = ["index", "delta", "text"];

#[derive(Deserialize)]
struct ResponseObject {
    usage: Option<OpenAiUsage>,
}

/// Usage and text of an OpenAI-style stream, event by event.
#[derive(Debug)]
pub struct OpenAiTally {
    usage: Option<TokenUsage>,
    /// Text streamed so far, up to a cap.
    pub kept: Kept,
    /// Set for a chat-completions stream, which the gateway can end as OpenAI does at
    /// `max_tokens`.
    chat: Option<ChatStream>,
}

/// What ending a chat-completions stream needs: the fields its chunks repeat, the choices
/// seen, and whether the client asked for the usage chunk.
#[derive(Debug, Default)]
struct ChatStream {
    include_usage: bool,
    /// Prices the usage chunk: the client is told the call's cost in `usage.cost`.
    pricer: Option<Pricer>,
    id: String,
    model: String,
    created: i64,
    /// Highest choice index seen, plus one.
    choices: u64,
}

impl OpenAiTally {
    /// A tally keeping up to `text_bytes_max` bytes of streamed text.
    #[must_use]
    pub fn new(text_bytes_max: usize) -> OpenAiTally {
        OpenAiTally {
            usage: None,
            kept: Kept::new(text_bytes_max),
            chat: None,
        }
    }

    /// A tally of a chat-completions stream, which [`Tally::stop`] can end; `include_usage`
    /// when the client asked for the usage chunk, which `pricer` adds the call's cost to.
    #[must_use]
    pub fn chat(text_bytes_max: usize, include_usage: bool, pricer: Option<Pricer>) -> OpenAiTally {
        OpenAiTally {
            chat: Some(ChatStream {
                include_usage,
                pricer,
                ..ChatStream::default()
            }),
            ..OpenAiTally::new(text_bytes_max)
        }
    }
}

impl ChatStream {
    /// Takes the repeated fields from the first chunk that has them (`chunk`'s `id`, `model`
    /// and `created`), and counts choices (`choices` is the highest index seen, plus one).
    fn observe(&mut self, json: &str, chunk: &[Option<Member>; 8], choices: u64) {
        let [id, model, created, ..] = chunk;
        let text = |member: &Option<Member>| {
            member
                .as_ref()
                .and_then(|m| json_scan::str_at(json, &m.value))
        };
        if self.id.is_empty()
            && let Some(id) = text(id)
        {
            id.as_ref().clone_into(&mut self.id);
            if let Some(model) = text(model) {
                model.as_ref().clone_into(&mut self.model);
            }
            self.created = created
                .as_ref()
                .and_then(|m| json_scan::read(json.as_bytes(), m))
                .unwrap_or(0);
        }
        self.choices = self.choices.max(choices);
    }

    /// The provider's usage chunk (`data`) with the call's cost added to its usage, as an
    /// event; `None` when the client did not ask for it or there is no pricer.
    fn priced(&self, data: &[u8], usage: &TokenUsage) -> Option<Bytes> {
        let cost = self.pricer.as_ref()?.cost(usage)?;
        if !self.include_usage {
            return None;
        }
        let mut chunk: serde_json::Value = serde_json::from_slice(data).ok()?;
        chunk
            .get_mut("usage")?
            .as_object_mut()?
            .insert("cost".into(), json!(cost));
        Some(Bytes::from(format!("data: {chunk}\n\n")))
    }

    /// The chunks OpenAI ends a stream with at `max_tokens`: every choice finished with
    /// `length`, the usage chunk if asked for, then `[DONE]`.
    fn stop(&self, usage: &TokenUsage) -> String {
        let chunk = |choices: serde_json::Value| {
            json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": choices,
            })
        };
        let finished: Vec<serde_json::Value> = (0..self.choices.max(1))
            .map(|index| json!({"index": index, "delta": {}, "finish_reason": "length"}))
            .collect();
        let mut out = format!("data: {}\n\n", chunk(json!(finished)));
        if self.include_usage {
            let mut last = chunk(json!([]));
            last["usage"] = json!({
                "prompt_tokens": usage.input.0,
                "completion_tokens": usage.output.0,
                "total_tokens": usage.input.0.saturating_add(usage.output.0),
                "prompt_tokens_details": {"cached_tokens": usage.cached.0},
                "completion_tokens_details": {"reasoning_tokens": usage.reasoning.0},
            });
            if let Some(cost) = self.pricer.as_ref().and_then(|p| p.cost(usage)) {
                last["usage"]["cost"] = json!(cost);
            }
            out.push_str(&format!("data: {last}\n\n"));
        }
        out.push_str("data: [DONE]\n\n");
        out
    }
}

impl Tally for OpenAiTally {
    fn observe(&mut self, data: &[u8]) -> Observed {
        let mut observed = Observed::default();
        let Ok(json) = std::str::from_utf8(data) else {
            return observed;
        };
        let Ok(chunk) = json_scan::scan_text(json, CHUNK) else {
            return observed;
        };
        let [_, _, _, choices, usage, kind, delta, response] = &chunk.members;
        let text_before = self.kept.seen_bytes();
        let (mut listed, mut choices_seen) = (0_u64, 0_u64);
        for choice in choices
            .iter()
            .flat_map(|m| json_scan::objects(json, &m.value, CHOICE))
        {
            listed += 1;
            let Some(choice) = choice else {
                continue;
            };
            let [index, delta, text] = &choice.members;
            let index = index
                .as_ref()
                .and_then(|m| json_scan::u64_at(json, m))
                .unwrap_or(0);
            choices_seen = choices_seen.max(index.saturating_add(1));
            if let Some(delta) = delta {
                self.kept.keep_strings(json, &delta.value);
            }
            if let Some(text) = text
                .as_ref()
                .and_then(|m| json_scan::str_at(json, &m.value))
            {
                self.kept.keep(&text);
            }
        }
        if let Some(chat) = &mut self.chat {
            chat.observe(json, &chunk.members, choices_seen);
        }
        let kind = kind
            .as_ref()
            .and_then(|m| json_scan::str_at(json, &m.value));
        if let (Some(kind), Some(delta)) = (&kind, delta)
            && kind.ends_with(".delta")
        {
            self.kept.keep_strings(json, &delta.value);
        }
        observed.text = self.kept.seen_bytes() > text_before;
        let usage = usage
            .as_ref()
            .filter(|m| !json_scan::is_null(json, m))
            .and_then(|m| json_scan::read::<OpenAiUsage>(json.as_bytes(), m))
            .or_else(|| {
                let response = response.as_ref()?;
                json_scan::read::<ResponseObject>(json.as_bytes(), response)?.usage
            });
        if let Some(usage) = usage.as_ref().and_then(OpenAiUsage::normalise) {
            self.usage = Some(usage);
            observed.usage_only = listed == 0 && kind.is_none();
            if observed.usage_only
                && let Some(chat) = &self.chat
            {
                observed.rewritten = chat.priced(data, &usage);
            }
        }
        observed
    }

    fn reading(&mut self) -> Reading {
        Reading::of_stream(self.usage, &mut self.kept)
    }

    fn text_bytes(&self) -> u64 {
        self.kept.seen_bytes()
    }

    fn stop(&mut self, usage: &TokenUsage) -> Option<String> {
        self.chat.as_ref().map(|chat| chat.stop(usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::sse::json_data;
    use crate::providers::text::structural;
    use proptest::prelude::*;
    use serde_json::Value;

    #[test]
    fn usage_in_both_spellings() {
        let chat = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":100,"completion_tokens":20,
            "prompt_tokens_details":{"cached_tokens":60},"completion_tokens_details":{"reasoning_tokens":5}}}"#;
        assert_eq!(
            usage_of_body(chat),
            Some(TokenUsage::new(100, 60, 0, 20, 5))
        );
        let responses = br#"{"output":[],"usage":{"input_tokens":7,"output_tokens":3,
            "input_tokens_details":{"cached_tokens":2},"output_tokens_details":{"reasoning_tokens":1}}}"#;
        assert_eq!(
            usage_of_body(responses),
            Some(TokenUsage::new(7, 2, 0, 3, 1))
        );
        let embeddings = br#"{"data":[],"usage":{"prompt_tokens":9,"total_tokens":9}}"#;
        assert_eq!(
            usage_of_body(embeddings),
            Some(TokenUsage::new(9, 0, 0, 0, 0))
        );
        assert_eq!(usage_of_body(b"{\"choices\":[]}"), None);
        assert_eq!(usage_of_body(b"not json"), None);
    }

    #[test]
    fn a_chat_stream_is_ended_as_openai_ends_one_at_max_tokens() {
        let mut tally = OpenAiTally::chat(
            1024,
            true,
            Some(Pricer::new(|u| {
                Some(tollgate_engine::Nanos(u.output.0 * 1_000))
            })),
        );
        tally.observe(
            br#"{"id":"chatcmpl-9","object":"chat.completion.chunk","created":7,"model":"gpt-4o-2024","choices":[{"index":0,"delta":{"content":"Hel"}},{"index":1,"delta":{"content":"Yo"}}]}"#,
        );
        assert_eq!(tally.text_bytes(), 5);
        let out = tally.stop(&TokenUsage::new(12, 2, 0, 3, 0)).unwrap();
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
        let [finish, usage] = json_data(&out).try_into().unwrap();
        for chunk in [&finish, &usage] {
            assert_eq!(
                (&chunk["id"], &chunk["model"], &chunk["created"]),
                (
                    &serde_json::json!("chatcmpl-9"),
                    &serde_json::json!("gpt-4o-2024"),
                    &serde_json::json!(7)
                )
            );
        }
        let reasons: Vec<_> = finish["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["index"].as_u64().unwrap(),
                    c["finish_reason"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(reasons, [(0, "length"), (1, "length")]);
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], 12);
        assert_eq!(usage["usage"]["completion_tokens"], 3);
        assert_eq!(usage["usage"]["total_tokens"], 15);
        assert_eq!(usage["usage"]["cost"], "0.000003");
        // No usage chunk for a client that did not ask; other routes' streams are not ended.
        let mut quiet = OpenAiTally::chat(1024, false, None);
        assert_eq!(
            json_data(&quiet.stop(&TokenUsage::default()).unwrap()).len(),
            1
        );
        assert_eq!(OpenAiTally::new(1024).stop(&TokenUsage::default()), None);
    }

    #[test]
    fn the_usage_chunk_a_client_asked_for_says_what_the_call_cost() {
        let pricer = Pricer::new(|u| Some(tollgate_engine::Nanos(u.input.0 * 2_000_000)));
        let mut tally = OpenAiTally::chat(1024, true, Some(pricer.clone()));
        let seen = tally.observe(
            br#"{"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
        );
        assert!(seen.usage_only);
        let rewritten = seen.rewritten.unwrap();
        let data = std::str::from_utf8(&rewritten)
            .unwrap()
            .strip_prefix("data: ")
            .unwrap();
        let chunk: serde_json::Value = serde_json::from_str(data.trim_end()).unwrap();
        assert_eq!(chunk["usage"]["cost"], "0.01");
        assert_eq!(chunk["usage"]["prompt_tokens"], 5);
        // A usage chunk the gateway asked for (the client did not) is not priced: it is hidden.
        let mut hidden = OpenAiTally::chat(1024, false, Some(pricer));
        let seen = hidden.observe(br#"{"choices":[],"usage":{"prompt_tokens":5}}"#);
        assert!(seen.usage_only && seen.rewritten.is_none());
    }

    #[test]
    fn streams_report_text_and_the_usage_chunk() {
        let mut tally = OpenAiTally::new(1024);
        let seen = tally.observe(
            br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}],"usage":null}"#,
        );
        assert_eq!(
            seen,
            Observed {
                usage_only: false,
                text: true,
                rewritten: None,
            }
        );
        tally.observe(
            br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\""}}]}}]}"#,
        );
        assert_eq!(tally.kept.text, "Hel{\"a\"");
        let seen =
            tally.observe(br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#);
        assert_eq!(
            seen,
            Observed {
                usage_only: true,
                text: false,
                rewritten: None,
            }
        );
        assert_eq!(tally.observe(b"[DONE]"), Observed::default());
        assert_eq!(
            tally.reading(),
            Reading::Reported(TokenUsage::new(5, 0, 0, 2, 0))
        );
    }

    #[test]
    fn responses_streams_read_deltas_and_the_completed_usage() {
        let mut tally = OpenAiTally::new(1024);
        tally.observe(br#"{"type":"response.output_text.delta","delta":"abc"}"#);
        let seen = tally.observe(
            br#"{"type":"response.completed","response":{"usage":{"input_tokens":4,"output_tokens":1}}}"#,
        );
        assert!(!seen.usage_only, "responses events are never hidden");
        assert_eq!(tally.kept.text, "abc");
        assert_eq!(
            tally.reading(),
            Reading::Reported(TokenUsage::new(4, 0, 0, 1, 0))
        );
    }

    #[test]
    fn a_stream_without_usage_is_counted_from_its_text() {
        let mut tally = OpenAiTally::new(4);
        tally.observe(r#"{"choices":[{"delta":{"content":"abcé"}}]}"#.as_bytes());
        assert_eq!(
            tally.reading(),
            Reading::Text {
                text: "abc".into(),
                beyond_bytes: 2,
                input: None
            }
        );
    }

    /// What a chunk holds, read the naive way (serde_json's tree): the text the tally must
    /// keep, in order, and the usage it must report.
    fn naive(chunk: &Value) -> (Vec<String>, Option<TokenUsage>, bool) {
        fn strings(value: &Value, out: &mut Vec<String>) {
            match value {
                Value::String(s) => out.push(s.clone()),
                Value::Array(items) => items.iter().for_each(|item| strings(item, out)),
                Value::Object(map) => map
                    .iter()
                    .filter(|(key, _)| !structural(key))
                    .for_each(|(_, item)| strings(item, out)),
                _ => {}
            }
        }
        let mut text = Vec::new();
        let choices = chunk["choices"].as_array().cloned().unwrap_or_default();
        for choice in &choices {
            strings(&choice["delta"], &mut text);
            if let Some(s) = choice["text"].as_str() {
                text.push(s.to_string());
            }
        }
        let kind = chunk["type"].as_str();
        if kind.is_some_and(|k| k.ends_with(".delta")) {
            strings(&chunk["delta"], &mut text);
        }
        let usage = [&chunk["usage"], &chunk["response"]["usage"]]
            .into_iter()
            .find(|u| u.is_object())
            .and_then(|u| OpenAiUsage::deserialize(u).ok()?.normalise());
        (text, usage, choices.is_empty() && kind.is_none())
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![".{0,12}", "[a-z \"\\\\\n\u{e9}\u{1F600}]{0,12}"]
    }

    fn delta() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<u32>().prop_map(Value::from),
            text().prop_map(Value::from),
        ];
        let key = prop_oneof![
            Just("content"),
            Just("role"),
            Just("reasoning_content"),
            Just("tool_calls"),
            Just("function"),
            Just("arguments"),
            Just("type"),
            Just("id"),
        ]
        .prop_map(String::from);
        leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn usage() -> impl Strategy<Value = Value> {
        (
            prop::option::of(0u64..1 << 40),
            prop::option::of(0u64..1 << 20),
            prop::option::of(0u64..1 << 20),
            any::<bool>(),
        )
            .prop_map(|(prompt, completion, cached, responses)| {
                let (i, o, d) = if responses {
                    ("input_tokens", "output_tokens", "input_tokens_details")
                } else {
                    (
                        "prompt_tokens",
                        "completion_tokens",
                        "prompt_tokens_details",
                    )
                };
                let mut usage = serde_json::Map::new();
                prompt.map(|n| usage.insert(i.into(), n.into()));
                completion.map(|n| usage.insert(o.into(), n.into()));
                cached.map(|n| usage.insert(d.into(), json!({"cached_tokens": n})));
                Value::Object(usage)
            })
    }

    fn chunk() -> impl Strategy<Value = Value> {
        let choice = (0u64..4, prop::option::of(delta()), prop::option::of(text()))
            .prop_map(|(index, delta, text)| {
                json!({"index": index, "delta": delta, "text": text, "finish_reason": null})
            });
        (
            prop::option::of(prop::collection::vec(choice, 0..3)),
            prop_oneof![Just(None), Just(Some(Value::Null)), usage().prop_map(Some)],
            prop::option::of(prop_oneof![
                Just("response.output_text.delta"),
                Just("response.completed"),
                Just("response.created"),
            ]),
            prop::option::of(delta()),
            prop::option::of(usage()),
        )
            .prop_map(|(choices, usage, kind, delta, response)| {
                let mut chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk"});
                let members = [
                    ("choices", choices.map(|c| json!(c))),
                    ("usage", usage),
                    ("type", kind.map(|k| json!(k))),
                    ("delta", delta),
                    ("response", response.map(|u| json!({"usage": u}))),
                ];
                for (name, value) in members {
                    if let Some(value) = value {
                        chunk[name] = value;
                    }
                }
                chunk
            })
    }

    proptest! {
        /// Scanning a chunk reads what parsing it into a tree reads: the same text in the same
        /// order, the same usage, the same chunks hidden as usage-only; compact or pretty.
        #[test]
        fn the_scan_reads_what_a_parse_reads(
            chunks in prop::collection::vec(chunk(), 1..6),
            pretty in any::<bool>(),
        ) {
            let mut tally = OpenAiTally::new(1 << 20);
            let (mut text, mut usage) = (String::new(), None);
            for chunk in &chunks {
                let data = if pretty {
                    serde_json::to_vec_pretty(chunk).unwrap()
                } else {
                    serde_json::to_vec(chunk).unwrap()
                };
                let (strings, reported, bare) = naive(chunk);
                let seen = tally.observe(&data);
                let added: String = strings.concat();
                prop_assert_eq!(seen.text, !added.is_empty());
                prop_assert_eq!(seen.usage_only, reported.is_some() && bare);
                text.push_str(&added);
                usage = reported.or(usage);
            }
            prop_assert_eq!(tally.text_bytes(), text.len() as u64);
            let expected = match usage {
                Some(usage) => Reading::Reported(usage),
                None => Reading::Text { text, beyond_bytes: 0, input: None },
            };
            prop_assert_eq!(tally.reading(), expected);
        }
    }
}
