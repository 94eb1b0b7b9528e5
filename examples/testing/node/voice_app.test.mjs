// Tests of voice_app.mjs against omniserve: `npm install`, then `node --test`.
// The omniserve command must be on the PATH, or named by OMNISERVE_COMMAND.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import OpenAI from "openai";

import { startOmniserve } from "./omniserve.mjs";
import { AnswerInterrupted, ask } from "./voice_app.mjs";

let server;
let client;

before(async () => {
  server = await startOmniserve();
  client = new OpenAI({ apiKey: server.apiKey, baseURL: server.baseURL, maxRetries: 0 });
});

after(async () => {
  await server?.stop();
});

function header(headers, name) {
  return typeof headers?.get === "function" ? headers.get(name) : headers?.[name];
}

test("the answer is spoken", async () => {
  server.setRules([
    { match: { message: "weather" }, reply: { text: "It is sunny. Take a hat." } },
  ]);
  const answer = await ask(client, "What is the weather like?");
  assert.equal(answer.text, "It is sunny. Take a hat.");
  assert.ok(answer.audioChunks > 1);
  assert.ok(answer.pcm.length > 24_000, "more than half a second of speech");
  assert.equal(answer.finishReason, "stop");
});

test("a rate limit says when to retry", async () => {
  server.setRules([{ fault: { error: "limit_requests", retry_after: 2 } }]);
  await assert.rejects(ask(client, "Hello"), (err) => {
    assert.equal(err.status, 429);
    assert.equal(header(err.headers, "retry-after"), "2");
    return true;
  });
});

test("an error midway keeps what arrived", async () => {
  server.setRules([
    {
      reply: { text: "First sentence. Second sentence. Third sentence." },
      fault: { error: "data_inspection_failed", after_chunks: 4 },
    },
  ]);
  await assert.rejects(ask(client, "Tell me a story"), (err) => {
    assert.ok(err instanceof AnswerInterrupted);
    assert.ok(err.partial.text.startsWith("First"));
    assert.match(err.message, /inappropriate/);
    return true;
  });
});

test("a dropped connection is an interruption", async () => {
  server.setRules([{ fault: { drop_after_chunks: 3 } }]);
  await assert.rejects(ask(client, "Hello"), AnswerInterrupted);
});
