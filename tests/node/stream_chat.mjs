// A Node agent using the real `openai` npm package, pointed at `ragobs proxy` by its
// base URL only. Streams `count` Chat Completions answers (no stream_options: the
// proxy asks for usage itself and must hand back exactly what the API would have
// sent without it), then one non-streamed answer, and prints what it received as
// one JSON line for tests/test_proxy_node.py.
//
//     node stream_chat.mjs BASE_URL COUNT
import OpenAI from "openai";

const [baseURL, count] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "sk-node-agent", maxRetries: 0 });
const messages = [{ role: "user", content: "hi" }];
const streams = [];
for (let i = 0; i < Number(count); i++) {
  const t0 = performance.now();
  const stream = await client.chat.completions.create({
    model: "gpt-4o-mini", messages, stream: true,
  });
  let text = "";
  let ttftMs = null;
  let chunks = 0;
  let usageChunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    if (chunk.usage) usageChunks += 1;
    const piece = chunk.choices[0]?.delta?.content;
    if (piece) {
      if (ttftMs === null) ttftMs = performance.now() - t0;
      text += piece;
    }
  }
  streams.push({ text, ttftMs, chunks, usageChunks });
}
const whole = await client.chat.completions.create({ model: "gpt-4o-mini", messages });
console.log(JSON.stringify({
  streams,
  whole: { text: whole.choices[0].message.content, usage: whole.usage },
}));
