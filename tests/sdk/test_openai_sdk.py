"""The official OpenAI Python SDK, pointed at tollgate by its base URL alone."""

from decimal import Decimal

import openai
import pytest


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.key("open"), max_retries=0)


MESSAGES = [{"role": "user", "content": "Say hello."}]


def test_chat_completion(client):
    answer = client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    assert answer.choices[0].message.content == " hello" * 5
    assert answer.usage.completion_tokens == 5
    assert answer.usage.prompt_tokens > 0


def test_streaming_without_asking_for_usage_sees_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=MESSAGES, max_tokens=4, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " hello" * 4
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "the gateway's usage chunk has no choices; it must be hidden"


def test_streaming_with_usage(client):
    chunks = list(client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=MESSAGES, max_tokens=3, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].choices == []
    # The call's cost rides in the usage chunk, a decimal string in the card's currency.
    assert Decimal(chunks[-1].usage.cost) > 0


def test_a_whole_answer_says_what_it_cost(client):
    raw = client.chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=MESSAGES, max_tokens=3)
    assert Decimal(raw.headers["x-tollgate-cost"]) > 0
    assert raw.parse().usage.completion_tokens == 3


def test_completions_embeddings_and_responses(client):
    completion = client.completions.create(model="openai/gpt-4o-mini", prompt="Once", max_tokens=2)
    assert completion.choices[0].text == " hello" * 2
    embedding = client.embeddings.create(model="openai/text-embedding-3-small", input="tollgate")
    assert len(embedding.data[0].embedding) == 4
    response = client.responses.create(model="openai/gpt-4o", input="hi", max_output_tokens=3)
    assert response.output_text == " hello" * 3
    assert response.usage.output_tokens == 3
    events = list(client.responses.create(model="openai/gpt-4o", input="hi", max_output_tokens=2, stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage.output_tokens == 2


def test_models_lists_what_the_key_may_use(stack):
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.key("openai-only"), max_retries=0)
    ids = {m.id for m in client.models.list()}
    assert "openai/gpt-4o-mini" in ids
    assert "anthropic/claude-sonnet-4-5" not in ids


def test_refusals_surface_as_the_sdks_own_errors(stack):
    bad = openai.OpenAI(base_url=stack.url + "/v1", api_key="tg_not_a_key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        bad.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES)
    assert refused.value.code == "invalid_api_key"

    limited = openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.key("openai-only"), max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        limited.chat.completions.create(model="anthropic/claude-sonnet-4-5", messages=MESSAGES)
    assert refused.value.code == "model_not_allowed"

    rpm = openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.key("open", requests_per_minute=1), max_retries=0)
    rpm.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as refused:
        rpm.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES, max_tokens=1)
    assert int(refused.value.response.headers["retry-after"]) >= 1


def test_a_spent_budget_is_a_402_with_our_body(stack):
    broke = openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.key("tiny"), max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        broke.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES, max_tokens=50)
    assert refused.value.status_code == 402
    body = refused.value.body
    assert body["type"] == "budget_exceeded"
    assert body["allocation"] == "tiny"
    assert body["level"] == "allocation"
    assert body["period"] == "day"
    assert body["resets_at"].endswith("T00:00:00Z")


def test_a_busy_budget_is_a_retryable_429_and_the_sdk_gets_through_by_retrying(stack):
    """Room held by a call in flight is busy, not spent: the SDK sees its own RateLimitError
    (a 429 with Retry-After), and with its retries on, gets through once the room is back."""
    import time

    holder = stack.hold_budget("busy-openai", seconds=2)
    time.sleep(0.5)
    key = stack.key("busy-openai")
    once = openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as busy:
        once.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    assert busy.value.code == "budget_busy"
    assert busy.value.body["allocation"] == "busy-openai"
    assert int(busy.value.response.headers["retry-after"]) >= 1
    patient = openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=8)
    answer = patient.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    assert answer.choices[0].message.content == " hello" * 5
    holder.join(30)


def test_a_stream_the_budget_ends_is_a_normal_end_at_length(stack):
    # The answer (2,000 tokens) costs more than the allocation's 0.02: the gateway ends the
    # stream where the budget ends, as OpenAI ends one at max_tokens, with the usage chunk.
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.key("stop-openai"), max_retries=0)
    chunks = list(client.chat.completions.create(
        model="openai/gpt-4o", max_tokens=4096, stream=True, stream_options={"include_usage": True},
        messages=MESSAGES, extra_body={"mock": {"answer_tokens": 2000}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    usage = chunks[-1].usage
    assert 0 < usage.completion_tokens < 2000
    assert Decimal(usage.cost) * 10**9 == stack.spent_nanos("stop-openai")
    assert text == " hello" * usage.completion_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert len({c.id for c in chunks}) == 1
    stack.flush()
    assert stack.spent_nanos("stop-openai") <= 20_000_000
    event = next(e for e in stack.events() if e.get("allocation") == "stop-openai" and e["status"] == "ok")
    assert event["tokens_out"] == usage.completion_tokens
    assert event["cost_nanos"] == stack.spent_nanos("stop-openai")
