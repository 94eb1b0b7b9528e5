// The playground: settings, the composer, the conversation, and one streamed reply at a time.

import { ApiError, getJson, listModels, streamChat } from "./api.js";
import { PcmPlayer, Recorder, base64ToBytes, toWav16k, wavBlob } from "./audio.js";
import { $, el } from "./dom.js";
import {
  AttachError,
  combine,
  fromFile,
  fromRecording,
  fromUrl,
  megabytes,
  userContent,
  withinRequestLimits,
} from "./media.js";
import { TalkSession, realtimeModelFor } from "./talk.js";

const KEY_STORE = "omniserve.apiKey"; // session storage: gone when the tab closes
const PREFS_STORE = "omniserve.playground"; // local storage: picks, never the key
const THEMES = ["system", "light", "dark"];
const languageNames = new Intl.DisplayNames(["en"], { type: "language" });

const state = {
  config: null,
  models: [],
  model: null,
  key: sessionStorage.getItem(KEY_STORE) || "",
  history: [], // the conversation as API messages
  conversation: 0, // bumped when cleared: a reply still ending then belongs to no conversation
  attachments: [],
  previews: [], // blob URLs shown in the log, freed when the conversation is cleared
  controller: null,
  audioCtx: null,
  player: null,
  talk: null, // the Talk session, while one runs
};

// What happened when, for the tests and for anyone curious in the browser's console.
const trace = [];
window.omniserveTrace = trace;
function mark(event, detail = {}) {
  trace.push({ event, t: performance.now(), ...detail });
}

function loadPrefs() {
  try {
    return JSON.parse(localStorage.getItem(PREFS_STORE)) || {};
  } catch {
    return {};
  }
}
const prefs = loadPrefs();
function savePrefs() {
  try {
    localStorage.setItem(PREFS_STORE, JSON.stringify(prefs));
  } catch {
    // storage full or disabled: the picks just do not persist
  }
}

function announce(text) {
  $("status").textContent = text;
}

function notice(text) {
  const box = $("notice");
  box.textContent = text || "";
  box.hidden = !text;
}

// ---- theme -------------------------------------------------------------------------------

function applyTheme(theme) {
  if (!THEMES.includes(theme)) theme = "system";
  if (theme === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  $("theme-name").textContent = theme;
  $("theme-button").setAttribute("aria-label", `Colour theme: ${theme}`);
  prefs.theme = theme;
}

// ---- API key -----------------------------------------------------------------------------

function openKeyDialog(reason) {
  $("key-reason").textContent = reason || "";
  $("api-key").value = state.key;
  $("key-dialog").showModal();
  $("api-key").focus();
}

function setKey(key) {
  state.key = key;
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  $("key-button").textContent = key ? "API key ✓" : "API key";
}

function needsKey(err) {
  return err instanceof ApiError && (err.status === 401 || err.status === 403);
}

// ---- models, voices, modes ---------------------------------------------------------------

async function loadModels() {
  let list;
  try {
    list = await listModels(state.key);
  } catch (err) {
    if (needsKey(err)) openKeyDialog(err.message);
    else notice(err.message);
    return;
  }
  notice("");
  state.models = list.data;
  const select = $("model");
  select.replaceChildren(...state.models.map((m) => el("option", { value: m.id, text: m.id })));
  select.disabled = state.models.length === 0;
  const wanted = [prefs.model, "qwen3-omni-flash"].find((id) => state.models.some((m) => m.id === id));
  if (wanted) select.value = wanted;
  selectModel();
}

function selectModel() {
  const model = state.models.find((m) => m.id === $("model").value) || state.models[0];
  if (!model) return;
  state.model = model;
  prefs.model = model.id;
  const limits = [
    `context ${model.context_length.toLocaleString("en")}`,
    `max output ${model.max_output_tokens.toLocaleString("en")}`,
  ];
  if (model.thinking) limits.push("thinking");
  if (!model.audio_output) limits.push("no speech");
  $("model-info").textContent = limits.join(" · ");
  const realtime = realtimeModelFor(model);
  $("talk").disabled = !realtime;
  $("talk").title = realtime
    ? `A spoken conversation with ${realtime}, hands-free: the server hears when you stop`
    : "Talk needs a model with a realtime API: qwen3-omni-flash or qwen-omni-turbo.";

  const voices = model.voice_details || [];
  const select = $("voice");
  select.replaceChildren(
    ...voices.map((v) =>
      el("option", { value: v.name, text: v.display_name && v.display_name !== v.name ? `${v.name} · ${v.display_name}` : v.name }),
    ),
  );
  const voice = [prefs.voice, model.default_voice].find((n) => voices.some((v) => v.name === n));
  if (voice) select.value = voice;
  const thinking = $("thinking");
  thinking.disabled = !model.thinking;
  if (!model.thinking) thinking.checked = false;
  else if (prefs.thinking !== undefined) thinking.checked = prefs.thinking;
  if (prefs.output) {
    const radio = document.querySelector(`input[name=output][value=${prefs.output}]`);
    if (radio) radio.checked = true;
  }
  updateModes();
  savePrefs();
}

function selectVoice() {
  const model = state.model;
  const voice = model && (model.voice_details || []).find((v) => v.name === $("voice").value);
  if (!voice) {
    $("voice-info").textContent = "";
    return;
  }
  prefs.voice = voice.name;
  const langs = voice.languages.map((code) => languageNames.of(code) || code).join(", ");
  const dialect = voice.dialect ? ` Speaks ${voice.dialect}.` : "";
  $("voice-info").textContent = `${voice.description}${dialect} Languages: ${langs}.${spokenBy(model, voice)}`;
  savePrefs();
}

/** Which voice engine reads this voice's speech, as the server says (GET /models). */
function spokenBy(model, voice) {
  const speech = model.speech;
  if (!speech) return "";
  if (speech.engine === "kokoro") {
    const byName = new Map();  // one Kokoro voice usually reads several languages
    for (const [code, name] of Object.entries(voice.neural_voices || {})) {
      byName.set(name, [...(byName.get(name) || []), languageNames.of(code) || code]);
    }
    const neural = [...byName].map(([name, langs]) => `${name} in ${langs.join(", ")}`).join("; ");
    const which = neural ? ` (${neural})` : "";
    return ` Spoken by Kokoro-82M, a neural voice${which}; by espeak-ng in other languages and for sentences it would deliver late.`;
  }
  if (speech.engine === "espeak") return " Spoken by espeak-ng.";
  if (speech.engine === "tone") return " Speech is a tone (no voice engine on this server).";
  return ` Spoken by ${speech.description}.`;
}

/** Speech needs a model that speaks and no thinking; the voice matters only with speech. */
function updateModes() {
  const model = state.model;
  const thinking = $("thinking").checked;
  const speechRadio = document.querySelector("input[name=output][value=audio]");
  const textRadio = document.querySelector("input[name=output][value=text]");
  const canSpeak = Boolean(model && model.audio_output) && !thinking;
  speechRadio.disabled = !canSpeak;
  if (!canSpeak) textRadio.checked = true;
  $("voice").disabled = !speechRadio.checked;
  $("thinking-info").textContent = !model || !model.thinking
    ? "This model has no thinking mode."
    : thinking
      ? "Thinking mode replies in text only."
      : "Shows the model's reasoning before its answer.";
  selectVoice();
}

function speaking() {
  return document.querySelector("input[name=output][value=audio]").checked;
}

// ---- attachments -------------------------------------------------------------------------

function mediaLimits() {
  return (state.model && state.model.media_limits) || {
    data_uri_max_bytes: 10485760,
    frames_min: 2,
    frames_max: 128,
    audio_per_request: 1,
    video_per_request: 1,
    audio_max_seconds: 180,
  };
}

async function addAttachments(make) {
  notice("");
  try {
    const made = await make();
    state.attachments = combine(state.attachments, made, mediaLimits());
  } catch (err) {
    if (!(err instanceof AttachError)) console.error(err);
    notice(err instanceof AttachError ? err.message : `Could not read that file: ${err.message}`);
  }
  renderAttachments();
}

function addFiles(files) {
  const list = [...files];
  if (list.length === 0) return;
  addAttachments(() => Promise.all(list.map((f) => fromFile(f, mediaLimits()))));
}

function thumbnail(a) {
  if (a.kind === "image" && !a.remote) return el("img", { src: a.preview, alt: "" });
  const symbol = { image: "▣", audio: "♪", video: "▶" }[a.kind];
  return el("span", { class: `badge ${a.kind}`, "aria-hidden": "true", text: symbol });
}

function describe(a) {
  const parts = [a.kind];
  if (a.size) parts.push(megabytes(a.size));
  if (a.remote) parts.push("URL");
  if (a.note) parts.push(a.note);
  return parts.join(", ");
}

function renderAttachments() {
  const list = $("attachments");
  list.replaceChildren(
    ...state.attachments.map((a, i) => {
      const remove = el("button", { type: "button", class: "remove", "aria-label": `Remove ${a.name}`, text: "×" });
      remove.addEventListener("click", () => {
        const [removed] = state.attachments.splice(i, 1);
        if (removed.preview) URL.revokeObjectURL(removed.preview);
        renderAttachments();
        $("prompt").focus();
      });
      return el("li", { class: "chip" }, thumbnail(a), el("span", { class: "chip-name", text: a.name, title: describe(a) }), el("span", { class: "chip-info", text: describe(a) }), remove);
    }),
  );
  const images = state.attachments.filter((a) => a.kind === "image").length;
  $("frames-choice").hidden = images < 2;
}

function asFrames() {
  return !$("frames-choice").hidden && document.querySelector("input[name=frames][value=frames]").checked;
}

// ---- recording ---------------------------------------------------------------------------

const recorder = new Recorder({
  maxSeconds: 180,
  onTick: (seconds) => {
    $("record").textContent = `Stop recording (${seconds.toFixed(0)} s)`;
  },
  onStop: async (blob) => {
    const button = $("record");
    button.textContent = "Record";
    button.setAttribute("aria-pressed", "false");
    button.classList.remove("recording");
    mark("recorded", { bytes: blob.size, type: blob.type });
    await addAttachments(async () => {
      const { blob: wav, seconds } = await toWav16k(blob);
      return [await fromRecording(wav, seconds)];
    });
    announce("Recording attached.");
  },
});

async function toggleRecording() {
  if (recorder.recording) {
    recorder.stop();
    return;
  }
  notice("");
  // A recording's WAV (16 kHz, 16-bit) grows by 42.7 kB of base64 a second.
  const limits = mediaLimits();
  recorder.maxSeconds = Math.min(limits.audio_max_seconds || 180, Math.floor(limits.data_uri_max_bytes / 42700));
  try {
    await recorder.start();
  } catch (err) {
    notice(`The microphone is not available: ${err.message}`);
    return;
  }
  const button = $("record");
  button.setAttribute("aria-pressed", "true");
  button.classList.add("recording");
  button.textContent = "Stop recording (0 s)";
  mark("recording");
}

// ---- the conversation --------------------------------------------------------------------

function scrollDown() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}

function renderUser(text, attachments, frames, droppedNote) {
  $("empty").hidden = true;
  const media = attachments.length
    ? el(
        "div",
        { class: "media" },
        ...attachments.map((a) => {
          if (a.kind === "image" && !a.remote) return el("img", { src: a.preview, alt: a.name });
          if (a.kind === "audio" && !a.remote) return el("audio", { src: a.preview, controls: "", "aria-label": a.name });
          if (a.kind === "video" && !a.remote) return el("video", { src: a.preview, controls: "", muted: "", "aria-label": a.name });
          return el("span", { class: "link", text: `${a.kind}: ${a.url}` });
        }),
      )
    : null;
  const label = frames ? `${attachments.length} frames of one video` : null;
  const article = el(
    "article",
    { class: "msg user" },
    el("h3", { class: "who", text: "You" }),
    media,
    label ? el("p", { class: "hint", text: label }) : null,
    text ? el("div", { class: "text", text }) : null,
    droppedNote ? el("p", { class: "hint", text: droppedNote }) : null,
  );
  $("log").append(article);
  scrollDown();
  return article;
}

function renderAssistant(modelId, voice) {
  const reasoningText = el("div", { class: "reasoning-text" });
  const reasoning = el("details", { class: "reasoning", hidden: "" }, el("summary", { text: "Reasoning" }), reasoningText);
  const text = el("div", { class: "text" });
  const audio = el("div", { class: "audio-row", hidden: "" });
  const usage = el("p", { class: "usage" });
  const error = el("div", { class: "error", role: "alert", hidden: "" });
  const article = el(
    "article",
    { class: "msg assistant", "aria-busy": "true", "data-state": "streaming" },
    el("h3", { class: "who", text: voice ? `${modelId} · ${voice}` : modelId }),
    reasoning,
    text,
    audio,
    error,
    usage,
  );
  $("log").append(article);
  scrollDown();
  return { article, reasoning, reasoningText, text, audio, usage, error };
}

function usageLine(reply, elapsed) {
  const parts = [];
  const u = reply.usage;
  const details = (obj) =>
    Object.entries(obj || {})
      .map(([k, v]) => `${k.replace(/_tokens$/, "")} ${v}`)
      .join(", ");
  if (u) {
    parts.push(`input ${u.prompt_tokens} (${details(u.prompt_tokens_details)})`);
    parts.push(`output ${u.completion_tokens} (${details(u.completion_tokens_details)})`);
  }
  if (reply.ttft !== null) parts.push(`first token ${Math.round(reply.ttft)} ms`);
  if (reply.ttfa !== null) parts.push(`first audio ${Math.round(reply.ttfa)} ms`);
  parts.push(`${(elapsed / 1000).toFixed(1)} s`);
  if (reply.finish === "length") parts.push("cut at max tokens");
  return parts.join(" · ");
}

function attachAudio(view, reply, requestId) {
  if (reply.pcm.length === 0) return;
  const blob = wavBlob(reply.pcm);
  const url = URL.createObjectURL(blob);
  state.previews.push(url);
  const seconds = blob.size / 48000;
  const player = el("audio", { controls: "", src: url, "aria-label": "The reply's speech" });
  player.addEventListener("play", () => stopLiveAudio());
  const name = `omniserve-${(requestId || "reply").slice(0, 8)}.wav`;
  const download = el("a", { href: url, download: name, class: "button", text: `Download WAV (${seconds.toFixed(1)} s)` });
  view.audio.replaceChildren(player, download);
  view.audio.hidden = false;
}

function stopLiveAudio() {
  if (state.player) {
    state.player.stop();
    state.player = null;
  }
}

function ensureAudio() {
  // Created and resumed inside the click or key press that sends: browsers allow sound then.
  if (!state.audioCtx) state.audioCtx = new AudioContext();
  if (state.audioCtx.state === "suspended") state.audioCtx.resume();
  return state.audioCtx;
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("model").disabled = busy;
}

async function send() {
  if (state.controller || state.talk) return;
  const model = state.model;
  if (!model) {
    notice("No model is loaded yet.");
    return;
  }
  if (recorder.recording) {
    notice("Stop the recording first.");
    return;
  }
  const text = $("prompt").value.trim();
  const attachments = state.attachments;
  if (!text && attachments.length === 0) {
    notice("Type a message or attach something first.");
    return;
  }
  const limits = mediaLimits();
  const frames = asFrames();
  if (frames && attachments.length < limits.frames_min) {
    notice(`A frame list needs at least ${limits.frames_min} images.`);
    return;
  }
  notice("");
  const audioOut = speaking();
  if (audioOut) ensureAudio();
  const voice = $("voice").value;
  const userMessage = { role: "user", content: userContent(text, attachments, frames) };
  const [conversation, dropped] = withinRequestLimits([...state.history, userMessage], limits);
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...conversation);
  const body = {
    model: model.id,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    modalities: audioOut ? ["text", "audio"] : ["text"],
  };
  if (audioOut) body.audio = { voice, format: "wav" };
  if ($("thinking").checked) body.enable_thinking = true;

  const droppedNote = dropped
    ? "Earlier audio or video was left out of this request: the API takes one of each per request."
    : null;
  renderUser(text, attachments, frames, droppedNote);
  state.previews.push(...attachments.filter((a) => a.preview).map((a) => a.preview));
  $("prompt").value = "";
  state.attachments = [];
  renderAttachments();
  state.history.push(userMessage);

  const view = renderAssistant(model.id, audioOut ? voice : null);
  const round = state.conversation;
  const reply = { text: "", reasoning: "", transcript: "", pcm: [], usage: null, ttft: null, ttfa: null, finish: null };
  const controller = new AbortController();
  state.controller = controller;
  stopLiveAudio();
  const player = audioOut ? new PcmPlayer(state.audioCtx, mark) : null;
  state.player = player;
  setBusy(true);
  announce("Reply started.");
  const started = performance.now();
  trace.length = 0;
  mark("send", { speech: audioOut });

  const onChunk = (chunk) => {
    if (chunk.usage) reply.usage = chunk.usage;
    const choice = chunk.choices && chunk.choices[0];
    if (!choice) return;
    const delta = choice.delta || {};
    if (delta.reasoning_content) {
      if (reply.ttft === null) reply.ttft = performance.now() - started;
      reply.reasoning += delta.reasoning_content;
      view.reasoning.hidden = false;
      if (!reply.text) view.reasoning.open = true;
      view.reasoningText.append(delta.reasoning_content);
    }
    if (delta.content) {
      if (reply.ttft === null) reply.ttft = performance.now() - started;
      if (!reply.text) {
        view.reasoning.open = false;
        mark("first-text");
      }
      reply.text += delta.content;
      view.text.append(delta.content);
      mark("text", { length: reply.text.length });
      scrollDown();
    }
    if (delta.audio) {
      if (delta.audio.data) {
        const bytes = base64ToBytes(delta.audio.data);
        if (reply.pcm.length === 0) {
          reply.ttfa = performance.now() - started;
          mark("first-audio", { bytes: bytes.length });
        }
        reply.pcm.push(bytes);
        if (player) player.push(bytes);
      }
      if (delta.audio.transcript) {
        // Servers that put the text here instead of in content (older Qwen-Omni streams).
        reply.transcript += delta.audio.transcript;
        if (!reply.text) view.text.textContent = reply.transcript;
      }
    }
    if (choice.finish_reason) reply.finish = choice.finish_reason;
  };

  let outcome = "done";
  let requestId = null;
  try {
    ({ requestId } = await streamChat(body, { key: state.key, signal: controller.signal, onChunk }));
  } catch (err) {
    if (err.name === "AbortError") {
      outcome = "stopped";
    } else {
      outcome = "error";
      requestId = err.requestId;
      showError(view, err);
      if (needsKey(err)) openKeyDialog(err.message);
    }
  }
  const clock = state.audioCtx ? state.audioCtx.currentTime : null;
  mark("done", { outcome, audioClock: clock, audioFirstStart: player ? player.firstStart : null, underruns: player ? player.underruns : 0 });
  state.controller = null;
  setBusy(false);
  if (!reply.text && reply.transcript) reply.text = reply.transcript;
  if (outcome === "stopped") stopLiveAudio();

  if (round !== state.conversation) {
    return; // cleared while this reply was ending: nothing of it stays
  }
  if (outcome === "error" && !reply.text) {
    // The turn never happened: it leaves the conversation and comes back to the composer.
    state.history.pop();
    $("prompt").value = text;
    state.attachments = attachments;
    renderAttachments();
  } else if (reply.text) {
    state.history.push({ role: "assistant", content: reply.text });
  } else {
    state.history.pop();
  }
  view.article.setAttribute("aria-busy", "false");
  view.article.dataset.state = outcome;
  if (outcome === "stopped") view.usage.before(el("p", { class: "hint", text: "Stopped." }));
  view.usage.textContent = usageLine(reply, performance.now() - started);
  attachAudio(view, reply, requestId);
  announce(outcome === "error" ? "The reply failed." : outcome === "stopped" ? "Reply stopped." : "Reply finished.");
  $("prompt").focus();
}

function showError(view, err) {
  const lines = [el("strong", { text: err.message })];
  const meta = [];
  if (err.status) meta.push(`HTTP ${err.status}`);
  if (err.code) meta.push(err.code);
  if (err.requestId) meta.push(`request ${err.requestId}`);
  if (meta.length) lines.push(el("span", { class: "meta", text: meta.join(" · ") }));
  view.error.replaceChildren(...lines);
  view.error.hidden = false;
}

function stop() {
  if (state.controller) state.controller.abort();
  stopLiveAudio();
}

function clearConversation() {
  if (state.talk) state.talk.stop();
  stop();
  state.history = [];
  state.conversation += 1;
  // Attachments waiting in the message box keep their previews.
  const waiting = new Set(state.attachments.map((a) => a.preview));
  for (const url of state.previews) if (!waiting.has(url)) URL.revokeObjectURL(url);
  state.previews = [];
  $("log").replaceChildren($("empty"));
  $("empty").hidden = false;
  announce("Conversation cleared.");
  $("prompt").focus();
}

// ---- Talk ----------------------------------------------------------------------------------

/** The typed conversation's text, which a Talk session starts from (the realtime API takes
 * text items; media stay with the typed conversation). */
function historyText() {
  const out = [];
  for (const message of state.history) {
    const text = typeof message.content === "string"
      ? message.content
      : message.content.filter((p) => p.type === "text").map((p) => p.text).join("\n");
    if (text.trim()) out.push({ role: message.role, text });
  }
  return out;
}

function setTalking(on) {
  const button = $("talk");
  button.textContent = on ? "End talk" : "Talk";
  button.setAttribute("aria-pressed", String(on));
  button.classList.toggle("talking", on);
  $("composer").classList.toggle("talking", on);
  $("talk-panel").hidden = !on;
  // The session is set up from these when it starts; they wait until it ends.
  for (const id of ["model", "voice", "thinking", "system"]) $(id).disabled = on;
  for (const radio of document.querySelectorAll("input[name=output]")) radio.disabled = on;
  if (!on) {
    $("model").disabled = state.models.length === 0;
    $("thinking").disabled = !(state.model && state.model.thinking);
    document.querySelector("input[name=output][value=text]").disabled = false;
    updateModes();
  }
}

function toggleTalk() {
  if (state.talk) {
    state.talk.stop();
    return;
  }
  const realtime = realtimeModelFor(state.model);
  if (!realtime) {
    notice("Talk needs a model with a realtime API: pick qwen3-omni-flash or qwen-omni-turbo.");
    return;
  }
  if (state.controller) {
    notice("Wait for the reply to finish, or stop it, before you talk.");
    return;
  }
  if (recorder.recording) {
    notice("Stop the recording first.");
    return;
  }
  notice("");
  const ctx = ensureAudio();
  stopLiveAudio();
  const talk = new TalkSession({
    ctx,
    key: state.key,
    model: realtime,
    voice: speaking() ? $("voice").value : null,
    instructions: $("system").value.trim(),
    history: historyText(),
    notice,
    onEnd: (reason) => {
      if (state.talk === talk) state.talk = null;
      setTalking(false);
      announce("Talk ended.");
      if (reason) notice(reason.message || String(reason));
      if (needsKey(reason)) openKeyDialog(reason.message);
      else $("talk").focus();
    },
  });
  state.talk = talk;
  setTalking(true);
  talk.start();
}

// ---- wiring ------------------------------------------------------------------------------

function wire() {
  $("model").addEventListener("change", selectModel);
  $("voice").addEventListener("change", selectVoice);
  $("thinking").addEventListener("change", () => {
    prefs.thinking = $("thinking").checked;
    updateModes();
    savePrefs();
  });
  for (const radio of document.querySelectorAll("input[name=output]")) {
    radio.addEventListener("change", () => {
      prefs.output = radio.value;
      updateModes();
      savePrefs();
    });
  }
  $("clear").addEventListener("click", clearConversation);
  $("theme-button").addEventListener("click", () => {
    const current = document.documentElement.dataset.theme || "system";
    applyTheme(THEMES[(THEMES.indexOf(current) + 1) % THEMES.length]);
    savePrefs();
  });
  $("settings-toggle").addEventListener("click", () => {
    const open = document.body.classList.toggle("settings-open");
    $("settings-toggle").setAttribute("aria-expanded", String(open));
  });

  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  $("prompt").addEventListener("paste", (e) => {
    const files = [...(e.clipboardData ? e.clipboardData.files : [])];
    if (files.length) {
      e.preventDefault();
      addFiles(files);
    }
  });
  $("stop").addEventListener("click", stop);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.controller && !document.querySelector("dialog[open]")) stop();
  });
  $("attach").addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", () => {
    addFiles($("file").files);
    $("file").value = "";
  });
  $("record").addEventListener("click", toggleRecording);
  $("talk").addEventListener("click", toggleTalk);
  document.addEventListener("dragover", (e) => {
    e.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    if (e.dataTransfer) addFiles(e.dataTransfer.files);
  });

  $("key-button").addEventListener("click", () => openKeyDialog(""));
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setKey($("api-key").value.trim());
    $("key-dialog").close();
    loadModels();
  });
  $("key-cancel").addEventListener("click", () => {
    $("key-dialog").close();
    if (state.models.length === 0) notice("This server needs an API key: press “API key” to enter one.");
  });
  $("key-forget").addEventListener("click", () => {
    setKey("");
    $("key-dialog").close();
  });

  $("link").addEventListener("click", () => {
    $("url-error").hidden = true;
    $("url-input").value = "";
    $("url-dialog").showModal();
    $("url-input").focus();
  });
  $("url-cancel").addEventListener("click", () => $("url-dialog").close());
  $("url-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    let attachment;
    try {
      attachment = fromUrl($("url-input").value, $("url-kind").value);
      combine(state.attachments, [attachment], mediaLimits());
    } catch (err) {
      $("url-error").textContent = err.message;
      $("url-error").hidden = false;
      return;
    }
    $("url-dialog").close();
    await addAttachments(async () => [attachment]);
    $("prompt").focus();
  });
}

async function boot() {
  applyTheme(prefs.theme || "system");
  setKey(state.key);
  wire();
  try {
    state.config = await getJson("playground/config.json");
    $("server-info").textContent = `omniserve ${state.config.version}`;
  } catch (err) {
    state.config = { api_key_required: false };
  }
  if (state.config.api_key_required && !state.key) {
    openKeyDialog("This server needs an API key.");
    return;
  }
  await loadModels();
}

boot();
