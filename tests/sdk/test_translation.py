"""The OpenAI SDK calling an Anthropic model: requests and answers translated both ways."""

import json
from decimal import Decimal

import openai
import pytest

MODEL = "anthropic/claude-sonnet-4-5"
TOOLS = [{"type": "function", "function": {
    "name": "weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = {"name": "weather", "input": {"city": "Oslo"}}


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.key("open"), max_retries=0)


def test_chat_completion_from_an_anthropic_model(client):
    # The model ends on its own (4 tokens) before its cap (8): Anthropic's end_turn is "stop".
    answer = client.chat.completions.create(
        model=MODEL, max_tokens=8, extra_body={"mock": {"answer_tokens": 4}},
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert answer.object == "chat.completion"
    assert answer.model == MODEL
    assert answer.choices[0].message.content == " hello" * 4
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == 4


def test_streamed_chat_completion_from_an_anthropic_model(client):
    # The answer runs to its cap: Anthropic's max_tokens is "length".
    chunks = list(client.chat.completions.create(
        model=MODEL, max_tokens=3, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Hi"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " hello" * 3
    assert chunks[-1].usage.completion_tokens == 3
    assert Decimal(chunks[-1].usage.cost) > 0
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]


def test_tool_calls_round_trip(client):
    answer = client.chat.completions.create(
        model=MODEL, max_tokens=2, tools=TOOLS, tool_choice="auto",
        messages=[{"role": "user", "content": "Weather in Oslo?"}], extra_body={"mock": {"tool_use": CALL}})
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}

    # The tool's result goes back the OpenAI way; the gateway turns it into a tool_result block.
    follow_up = client.chat.completions.create(
        model=MODEL, max_tokens=2, tools=TOOLS,
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "Rain, 4 C"},
        ])
    assert follow_up.choices[0].message.content == " hello" * 2


def test_streamed_tool_calls_arrive_in_fragments(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, max_tokens=1, tools=TOOLS, stream=True,
        messages=[{"role": "user", "content": "Weather in Oslo?"}], extra_body={"mock": {"tool_use": CALL}}))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "weather"
    assert calls[0].id == "toolu_mock"
    arguments = "".join(tc.function.arguments or "" for tc in calls)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_anthropic_errors_come_back_in_openais_envelope(client):
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}],
            extra_body={"mock": {"status": 529}})
    assert failed.value.status_code == 529
    assert "mock: the error this request asked for" in failed.value.message


BEDROCK = "bedrock/anthropic.claude-3-haiku-20240307-v1:0"


def test_bedrock_converse_through_the_openai_sdk(client):
    answer = client.chat.completions.create(
        model=BEDROCK, max_tokens=5, messages=[{"role": "system", "content": "Brief."}, {"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content == " hello" * 5
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 5


def test_bedrock_converse_stream_through_the_openai_sdk(client):
    chunks = list(client.chat.completions.create(
        model=BEDROCK, max_tokens=4, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Hi"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " hello" * 4
    assert chunks[-1].usage.completion_tokens == 4


def test_bedrock_tool_calls_stream_in_fragments(client):
    chunks = list(client.chat.completions.create(
        model=BEDROCK, max_tokens=1, tools=TOOLS, stream=True,
        messages=[{"role": "user", "content": "Weather in Oslo?"}], extra_body={"mock": {"tool_use": CALL}}))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id == "tooluse_mock"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Oslo"}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]


def test_bedrock_errors_come_back_in_openais_envelope(client):
    with pytest.raises(openai.RateLimitError) as failed:
        client.chat.completions.create(
            model=BEDROCK, max_tokens=2, messages=[{"role": "user", "content": "Hi"}],
            extra_body={"mock": {"status": 429}})
    assert failed.value.type == "ThrottlingException"
