// A small app built on the Qwen-Omni API: it asks a question and keeps the spoken answer.
// This is the code under test; voice_app.test.mjs tests it against omniserve.

export class AnswerInterrupted extends Error {
  constructor(partial, cause) {
    super(`the answer was interrupted: ${cause.message}`);
    this.partial = partial;
    this.cause = cause;
  }
}

export async function ask(client, question, voice = "Cherry") {
  const answer = { text: "", pcm: Buffer.alloc(0), audioChunks: 0, finishReason: null };
  const stream = await client.chat.completions.create({
    model: "qwen3-omni-flash",
    messages: [{ role: "user", content: question }],
    modalities: ["text", "audio"],
    audio: { voice, format: "wav" },
    stream: true,
    stream_options: { include_usage: true },
  });
  try {
    for await (const chunk of stream) {
      if (chunk.usage) answer.usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      answer.text += choice.delta?.content ?? "";
      const audio = choice.delta?.audio;
      if (audio?.data) {
        answer.pcm = Buffer.concat([answer.pcm, Buffer.from(audio.data, "base64")]);
        answer.audioChunks += 1;
      }
      answer.finishReason = choice.finish_reason ?? answer.finishReason;
    }
  } catch (err) {
    throw new AnswerInterrupted(answer, err);
  }
  return answer;
}
