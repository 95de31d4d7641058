// The official OpenAI and Anthropic TypeScript SDKs, pointed at tollgate by base URL alone.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";

import { startStack } from "./stack.js";

let stack;
let openai;
let anthropic;

before(async () => {
  stack = await startStack();
  const key = await stack.key("open");
  openai = new OpenAI({ baseURL: `${stack.url}/v1`, apiKey: key, maxRetries: 0 });
  anthropic = new Anthropic({ baseURL: stack.url, apiKey: key, maxRetries: 0 });
});

after(async () => {
  await stack.stop();
});

const messages = [{ role: "user", content: "Say hello." }];

test("chat completion", async () => {
  const answer = await openai.chat.completions.create({ model: "openai/gpt-4o-mini", messages, max_tokens: 5 });
  assert.equal(answer.choices[0].message.content, " hello".repeat(5));
  assert.equal(answer.usage.completion_tokens, 5);
});

test("streamed chat completion hides the gateway's usage chunk", async () => {
  const stream = await openai.chat.completions.create({ model: "openai/gpt-4o-mini", messages, max_tokens: 3, stream: true });
  let text = "";
  for await (const chunk of stream) {
    assert.ok(chunk.choices.length > 0, "no usage-only chunk for a client that did not ask");
    text += chunk.choices[0].delta.content ?? "";
  }
  assert.equal(text, " hello".repeat(3));
});

test("an Anthropic model through the OpenAI SDK", async () => {
  // The model ends on its own (2 tokens) before its cap (4): Anthropic's end_turn is "stop".
  const answer = await openai.chat.completions.create({
    model: "anthropic/claude-sonnet-4-5", messages, max_tokens: 4, mock: { answer_tokens: 2 },
  });
  assert.equal(answer.choices[0].message.content, " hello".repeat(2));
  assert.equal(answer.choices[0].finish_reason, "stop");
});

test("Anthropic messages, whole and streamed", async () => {
  const message = await anthropic.messages.create({ model: "anthropic/claude-sonnet-4-5", max_tokens: 4, messages });
  assert.equal(message.content[0].text, " hello".repeat(4));
  assert.equal(message.usage.output_tokens, 4);
  const stream = anthropic.messages.stream({ model: "anthropic/claude-sonnet-4-5", max_tokens: 3, messages });
  let text = "";
  stream.on("text", (delta) => {
    text += delta;
  });
  const final = await stream.finalMessage();
  assert.equal(text, " hello".repeat(3));
  assert.equal(final.usage.output_tokens, 3);
});

test("a spent budget is a 402 with tollgate's body in both SDKs", async () => {
  const key = await stack.key("tiny");
  const broke = new OpenAI({ baseURL: `${stack.url}/v1`, apiKey: key, maxRetries: 0 });
  await assert.rejects(
    broke.chat.completions.create({ model: "openai/gpt-4o", messages, max_tokens: 50 }),
    (error) => {
      assert.equal(error.status, 402);
      assert.equal(error.error.type, "budget_exceeded");
      assert.equal(error.error.allocation, "tiny");
      return true;
    },
  );
  const brokeAnthropic = new Anthropic({ baseURL: stack.url, apiKey: key, maxRetries: 0 });
  await assert.rejects(
    brokeAnthropic.messages.create({ model: "anthropic/claude-sonnet-4-5", max_tokens: 50, messages }),
    (error) => {
      assert.equal(error.status, 402);
      assert.equal(error.error.error.type, "budget_exceeded");
      return true;
    },
  );
  const bad = new OpenAI({ baseURL: `${stack.url}/v1`, apiKey: "tg_nope", maxRetries: 0 });
  await assert.rejects(bad.chat.completions.create({ model: "openai/gpt-4o", messages }), OpenAI.AuthenticationError);
});

test("a busy budget is a retryable 429 in both SDKs, and their retries get through", async () => {
  // Long enough that both refusals below come while it holds, on a slow machine too.
  const holding = stack.holdBudget("busy", 4);
  await new Promise((resolve) => setTimeout(resolve, 500));
  const key = await stack.key("busy");
  const once = new OpenAI({ baseURL: `${stack.url}/v1`, apiKey: key, maxRetries: 0 });
  await assert.rejects(
    once.chat.completions.create({ model: "openai/gpt-4o-mini", messages, max_tokens: 5 }),
    (error) => {
      assert.ok(error instanceof OpenAI.RateLimitError);
      assert.equal(error.error.type, "budget_busy");
      assert.ok(Number(error.headers.get("retry-after")) >= 1);
      return true;
    },
  );
  const onceAnthropic = new Anthropic({ baseURL: stack.url, apiKey: key, maxRetries: 0 });
  await assert.rejects(
    onceAnthropic.messages.create({ model: "anthropic/claude-sonnet-4-5", max_tokens: 5, messages }),
    Anthropic.RateLimitError,
  );
  const patient = new OpenAI({ baseURL: `${stack.url}/v1`, apiKey: key, maxRetries: 8 });
  const answer = await patient.chat.completions.create({ model: "openai/gpt-4o-mini", messages, max_tokens: 5 });
  assert.equal(answer.choices[0].message.content, " hello".repeat(5));
  await holding;
});

test("a stream the budget ends is a normal end in both SDKs: length, and max_tokens", async () => {
  // Each answer (2,000 tokens) costs more than what the allocation (0.04) has left: the
  // gateway ends the stream where the budget ends, as the provider ends one at its limit.
  const key = await stack.key("stop");
  const openaiStopped = new OpenAI({ baseURL: `${stack.url}/v1`, apiKey: key, maxRetries: 0 });
  const stream = await openaiStopped.chat.completions.create({
    model: "openai/gpt-4o", messages, max_tokens: 4096, stream: true,
    stream_options: { include_usage: true }, mock: { answer_tokens: 2000 },
  });
  let text = "";
  const finishes = [];
  let usage;
  for await (const chunk of stream) {
    if (chunk.choices.length > 0) {
      text += chunk.choices[0].delta.content ?? "";
      if (chunk.choices[0].finish_reason) finishes.push(chunk.choices[0].finish_reason);
    }
    usage = chunk.usage ?? usage;
  }
  assert.deepEqual(finishes, ["length"]);
  assert.ok(usage.completion_tokens > 0 && usage.completion_tokens < 2000, JSON.stringify(usage));
  assert.equal(text, " hello".repeat(usage.completion_tokens));

  const anthropicStopped = new Anthropic({ baseURL: stack.url, apiKey: key, maxRetries: 0 });
  const messageStream = anthropicStopped.messages.stream({
    model: "anthropic/claude-sonnet-4-5", max_tokens: 4096, messages, mock: { answer_tokens: 2000 },
  });
  const final = await messageStream.finalMessage();
  assert.equal(final.stop_reason, "max_tokens");
  assert.ok(final.usage.output_tokens > 0 && final.usage.output_tokens < 2000);
  assert.equal(final.content[0].text, " hello".repeat(final.usage.output_tokens));
});
