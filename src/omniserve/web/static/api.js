// The API as any client sees it: relative URLs (so a path prefix in front of the server keeps
// working), the key as a bearer token, errors in the API's own envelope.

const BASE = "compatible-mode/v1";

export class ApiError extends Error {
  constructor(message, { status = 0, code = null, requestId = null } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

function headers(key, extra = {}) {
  const out = { ...extra };
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's page, say
  }
  const error = body && body.error;
  const message =
    (error && error.message) || `The server answered ${response.status} ${response.statusText}.`;
  return new ApiError(message, {
    status: response.status,
    code: error && error.code,
    requestId: (body && body.request_id) || response.headers.get("x-request-id"),
  });
}

async function reach(url, init) {
  try {
    return await fetch(url, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`Could not reach the server: ${err.message}`);
  }
}

export async function getJson(path, key) {
  const response = await reach(path, { headers: headers(key) });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export function listModels(key) {
  return getJson(`${BASE}/models`, key);
}

/**
 * POSTs a chat completion and calls ``onChunk`` with each parsed chunk as it arrives.
 * Resolves when ``[DONE]`` arrives (or the stream ends); an error event or an HTTP error
 * rejects with an ApiError carrying the API's message.
 */
export async function streamChat(body, { key, signal, onChunk }) {
  const response = await reach(`${BASE}/chat/completions`, {
    method: "POST",
    headers: headers(key, { "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const requestId = response.headers.get("x-request-id");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  let done = false;
  while (!done) {
    const { value, done: ended } = await reader.read();
    if (ended) break;
    buffered += value;
    let cut;
    while ((cut = buffered.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffered.slice(0, cut);
      buffered = buffered.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = block
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") {
        done = true;
        break;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) {
        await reader.cancel().catch(() => {});
        throw new ApiError(chunk.error.message || "The stream ended with an error.", {
          status: 200,
          code: chunk.error.code,
          requestId: chunk.request_id || requestId,
        });
      }
      onChunk(chunk);
    }
  }
  if (!done) throw new ApiError("The stream ended before [DONE]: the connection was cut.");
  return { requestId };
}
