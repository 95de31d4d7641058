"""Whatever the SDKs do, the budget table and the usage events agree to the nano."""

import anthropic
import openai


def test_sdk_calls_are_in_the_ledger_and_the_table_equals_the_events(stack):
    key = stack.key("ledger", agent="ledger-check")
    oai = openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0)
    ant = anthropic.Anthropic(base_url=stack.url, api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "Count to three."}]
    oai.chat.completions.create(model="openai/gpt-4o-mini", messages=messages, max_tokens=7)
    list(oai.chat.completions.create(model="openai/gpt-4o", messages=messages, max_tokens=5, stream=True))
    oai.embeddings.create(model="openai/text-embedding-3-small", input=["a", "b"])
    ant.messages.create(model="anthropic/claude-sonnet-4-5", max_tokens=9, messages=messages)
    with ant.messages.stream(model="anthropic/claude-sonnet-4-5", max_tokens=3, messages=messages) as s:
        s.until_done()

    stack.flush()
    events = [e for e in stack.events() if e["allocation"] == "ledger"]
    assert len(events) == 5
    assert all(e["status"] == "ok" and e["usage_source"] == "provider" for e in events)
    assert all(e["agent"] == "ledger-check" for e in events)
    assert sorted(e["tokens_out"] for e in events) == [0, 3, 5, 7, 9]
    assert sum(e["cost_nanos"] for e in events) == stack.spent_nanos("ledger") > 0
