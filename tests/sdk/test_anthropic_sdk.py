"""The official Anthropic Python SDK on tollgate's native /v1/messages, by base URL alone."""

import anthropic
import pytest

MODEL = "anthropic/claude-sonnet-4-5"
MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def client(stack):
    return anthropic.Anthropic(base_url=stack.url, api_key=stack.key("open"), max_retries=0)


def test_message(client):
    message = client.messages.create(model=MODEL, max_tokens=6, messages=MESSAGES)
    assert message.content[0].text == " hello" * 6
    assert message.usage.output_tokens == 6
    assert message.usage.input_tokens > 0


def test_streamed_message(client):
    with client.messages.stream(model=MODEL, max_tokens=4, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == " hello" * 4
    assert final.usage.output_tokens == 4


def test_a_stream_the_budget_ends_is_a_normal_end_at_max_tokens(stack):
    # The answer (2,000 tokens) costs more than the allocation's 0.02: the gateway ends the
    # stream where the budget ends, as Anthropic ends one at max_tokens.
    client = anthropic.Anthropic(base_url=stack.url, api_key=stack.key("stop-anthropic"), max_retries=0)
    with client.messages.stream(
        model=MODEL, max_tokens=4096, messages=MESSAGES, extra_body={"mock": {"answer_tokens": 2000}},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert 0 < final.usage.output_tokens < 2000
    assert text == " hello" * final.usage.output_tokens
    assert stack.spent_nanos("stop-anthropic") <= 20_000_000


def test_refusals(stack):
    bad = anthropic.Anthropic(base_url=stack.url, api_key="tg_not_a_key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    broke = anthropic.Anthropic(base_url=stack.url, api_key=stack.key("tiny"), max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as refused:
        broke.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES)
    assert refused.value.status_code == 402
    error = refused.value.body["error"]
    assert error["type"] == "budget_exceeded"
    assert error["allocation"] == "tiny"


def test_a_busy_budget_is_a_retryable_429_and_the_sdk_gets_through_by_retrying(stack):
    import time

    holder = stack.hold_budget("busy-anthropic", seconds=2)
    time.sleep(0.5)
    key = stack.key("busy-anthropic")
    once = anthropic.Anthropic(base_url=stack.url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as busy:
        once.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert busy.value.body["error"]["allocation"] == "busy-anthropic"
    assert int(busy.value.response.headers["retry-after"]) >= 1
    patient = anthropic.Anthropic(base_url=stack.url, api_key=key, max_retries=8)
    answer = patient.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert answer.usage.output_tokens == 5
    holder.join(30)
