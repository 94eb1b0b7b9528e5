// Talk: a hands-free spoken conversation over the realtime WebSocket API. The microphone
// streams to the server, whose turn detection hears when each turn starts and ends; the
// answer's speech plays as it arrives, and speaking over it stops it (barge-in).

import { listModels } from "./api.js";
import { Microphone, PcmPlayer, base64ToBytes, bytesToBase64 } from "./audio.js";
import { $, el } from "./dom.js";

const PATH = "api-ws/v1/realtime";
const KEY_PROTOCOL = "openai-insecure-api-key."; // how a browser, which cannot set headers, sends the key
const QUEUE_MAX = 100; // chunks (10 s) of microphone held while the socket opens
const LABELS = {
  off: "Off",
  connecting: "Connecting…",
  listening: "Listening",
  speaking: "You are speaking",
  thinking: "Thinking",
  answering: "Answering",
};

let sessions = 0;

/** The realtime model that answers with the chat model picked, or null when none does. */
export function realtimeModelFor(model) {
  if (!model) return null;
  if (model.family === "qwen-omni-turbo") return "qwen-omni-turbo-realtime";
  if (model.family === "qwen3-omni-flash") {
    // The realtime alias answers with the newest snapshot, whose voices include the older's.
    const snapshot = model.version === "snapshot" ? model.snapshot || model.id : null;
    return snapshot === "qwen3-omni-flash-2025-09-15"
      ? "qwen3-omni-flash-realtime-2025-09-15"
      : "qwen3-omni-flash-realtime";
  }
  return null;
}

/** The socket's address, relative to the page like every other URL of it (a path prefix in
 * front of the server keeps working). */
function socketUrl(model) {
  const url = new URL(`${PATH}?model=${encodeURIComponent(model)}`, document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function microphoneError(err) {
  if (err.name === "NotAllowedError" || err.name === "SecurityError") {
    return "The microphone was refused. Allow it for this page in the browser's site settings, then press Talk again.";
  }
  if (err.name === "NotFoundError" || err.name === "OverconstrainedError") {
    return "No microphone was found.";
  }
  if (err.name === "NotReadableError") return "The microphone is in use by another program.";
  return `The microphone is not available: ${err.message}`;
}

const SVG = "http://www.w3.org/2000/svg";

/** A microphone, drawn inline: the page has no icon font, and emoji fonts are not everywhere. */
function micIcon() {
  const icon = document.createElementNS(SVG, "svg");
  icon.setAttribute("viewBox", "0 0 24 24");
  icon.setAttribute("class", "mic");
  icon.setAttribute("aria-hidden", "true");
  for (const d of ["M12 3a3 3 0 0 0-3 3v6a3 3 0 0 0 6 0V6a3 3 0 0 0-3-3z", "M6 11a6 6 0 0 0 12 0M12 17v4M9 21h6"]) {
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", d);
    icon.append(path);
  }
  return icon;
}

function tokens(details) {
  return Object.entries(details || {})
    .filter(([, v]) => v)
    .map(([k, v]) => `${k.replace(/_tokens$/, "")} ${v}`)
    .join(", ");
}

/**
 * One Talk session: the microphone, the socket, the answer playing and the turns in the log.
 * ``onEnd(reason)`` is called once when it ends: ``reason`` is null when the user ended it, an
 * error message, or an ApiError (a refused key, say).
 */
export class TalkSession {
  constructor({ ctx, key, model, voice, instructions, history, notice, onEnd }) {
    this.ctx = ctx;
    this.key = key;
    this.model = model;
    this.voice = voice; // null: text only
    this.instructions = instructions;
    this.history = history; // earlier turns as {role, text}
    this.notice = notice;
    this.onEnd = onEnd;
    this.id = String(++sessions);
    this.panel = $("talk-panel");
    this.panel.dataset.session = this.id;
    this.ws = null;
    this.mic = null;
    this.opened = false;
    this.ready = false; // the server's session.created has come: audio may go up
    this.ended = false;
    this.queue = [];
    this.user = null; // the user turn being heard
    this.response = null; // the answer being given, or the last one
    this.turnEnded = null; // when the server said the last turn ended
    this.lastError = null;
    this.created = null; // the session as the server first described it
    // What happened, for the tests and for anyone curious in the browser's console.
    this.stats = { events: [], sent: 0, scheduled: 0, latencies: [], bargeIns: [] };
    window.omniserveTalk = this.stats;
    this.timer = null;
    this.panel.dataset.chunks = "0";
    this.panel.dataset.playing = "false";
    this.setSocket("closed");
  }

  // ---- starting and ending ---------------------------------------------------------------

  async start() {
    this.setState("connecting");
    $("empty").hidden = true;
    this.heading = this.divider(`Talk · ${this.model}`);
    try {
      this.mic = await Microphone.open(this.ctx, {
        onChunk: (bytes) => this.sendAudio(bytes),
        onLevel: (level) => this.showLevel(level),
        onEnded: () => this.end("The microphone stopped."),
      });
    } catch (err) {
      this.end(microphoneError(err));
      return;
    }
    if (this.ended) {
      this.mic.close(); // ended while the browser asked for the microphone
      return;
    }
    this.connect();
    this.timer = setInterval(() => this.tick(), 100);
  }

  connect() {
    const protocols = ["realtime"];
    if (this.key) protocols.push(KEY_PROTOCOL + this.key);
    try {
      this.ws = new WebSocket(socketUrl(this.model), protocols);
    } catch (err) {
      this.end(`Could not open a realtime session: ${err.message}`);
      return;
    }
    this.setSocket("connecting");
    this.ws.addEventListener("open", () => {
      this.opened = true;
      this.setSocket("open");
    });
    this.ws.addEventListener("message", (event) => this.receive(event.data));
    this.ws.addEventListener("close", (event) => this.closed(event));
  }

  /** The user's End talk. */
  stop() {
    this.end(null);
  }

  end(reason) {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.timer);
    if (this.mic) this.mic.close();
    if (this.ws) {
      if (this.ws.readyState === WebSocket.OPEN) this.send({ type: "session.finish" });
      this.ws.close(1000);
    }
    const r = this.response;
    if (r) {
      if (r.player) r.player.stop();
      if (!r.done) this.finish(r, r.cut ? "cut" : "stopped", r.cut ? null : "Stopped.");
    }
    if (this.user && this.user.article.dataset.state === "speaking") {
      this.user.text.textContent = "not sent";
      this.user.article.dataset.state = "stopped";
    }
    if (this.opened) {
      this.divider("Talk ended.");
    } else {
      // Nothing happened: the log is left as it was.
      this.heading.remove();
      $("empty").hidden = $("log").children.length > 1;
    }
    this.setState("off");
    this.panel.dataset.playing = "false";
    this.showLevel(0);
    this.onEnd(reason);
  }

  closed(event) {
    this.setSocket("closed");
    if (this.ended) return;
    if (!this.opened) {
      this.refused();
      return;
    }
    // An error event just before the close says why (a session's time limit, a server
    // shutting down); an older one is about something else.
    const recent = this.lastError && performance.now() - this.lastError.at < 2000;
    const why = recent ? this.lastError.text : event.reason || `the connection was lost (code ${event.code})`;
    this.end(`The realtime session closed: ${why}`);
  }

  /** A socket that never opened says nothing of why: ask the API the same question over HTTP,
   * whose error (a wrong key, say) has words. */
  async refused() {
    try {
      await listModels(this.key);
    } catch (err) {
      this.end(err);
      return;
    }
    this.end(`The server refused a realtime session with ${this.model}.`);
  }

  // ---- the socket ------------------------------------------------------------------------

  send(event) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(event));
  }

  sendAudio(bytes) {
    if (this.ended) return;
    if (!this.ready) {
      this.queue.push(bytes);
      if (this.queue.length > QUEUE_MAX) this.queue.shift();
      return;
    }
    this.send({ type: "input_audio_buffer.append", audio: bytesToBase64(bytes) });
    this.stats.sent += 1;
  }

  /** The session as the page's settings have it, and the typed conversation's text so far. */
  configure() {
    const session = { modalities: this.voice ? ["text", "audio"] : ["text"] };
    if (this.voice) session.voice = this.voice;
    if (this.instructions) session.instructions = this.instructions;
    this.send({ type: "session.update", session });
    for (const turn of this.history) {
      const content = [{ type: "input_text", text: turn.text }];
      this.send({ type: "conversation.item.create", item: { type: "message", role: turn.role, content } });
    }
    this.ready = true;
    const queued = this.queue;
    this.queue = [];
    for (const bytes of queued) this.sendAudio(bytes);
    this.setState("listening");
  }

  /** The session as the server now has it: an update it refused left the voice as it was. */
  updated(session) {
    const speech = (session.modalities || []).includes("audio");
    this.voice = speech ? session.voice || this.voice : null;
    this.heading.textContent = `Talk · ${this.model} · ${this.voice || "text only"}`;
  }

  receive(data) {
    if (this.ended) return;
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    this.stats.events.push(event.type);
    if (this.stats.events.length > 5000) this.stats.events.splice(0, 1000); // a long session
    const r = this.response;
    switch (event.type) {
      case "session.created":
        this.created = event.session || {};
        this.configure();
        break;
      case "session.updated":
        this.updated(event.session || {});
        break;
      case "input_audio_buffer.speech_started":
        this.bargeIn();
        this.user = this.renderUser(event.audio_start_ms || 0);
        this.setState("speaking");
        break;
      case "input_audio_buffer.speech_stopped":
        this.heard(event.audio_end_ms || 0);
        break;
      case "input_audio_buffer.committed":
        if (this.user) this.user.article.dataset.state = "heard";
        break;
      case "response.created":
        this.response = this.renderAssistant();
        break;
      case "response.audio_transcript.delta":
      case "response.text.delta":
        if (r && event.delta) this.text(r, event.delta);
        break;
      case "response.audio.delta":
        if (r && event.delta) this.audio(r, base64ToBytes(event.delta));
        break;
      case "response.done":
        if (r) this.done(r, event.response || {});
        break;
      case "error":
        this.error(event.error || {});
        break;
      default:
        break;
    }
  }

  // ---- a turn ----------------------------------------------------------------------------

  /** The user spoke while an answer was still coming or playing: it stops at once (the server
   * has cancelled it already when it was still coming). */
  bargeIn() {
    const r = this.response;
    if (!r || r.cut) return;
    const audible = r.player !== null && !r.player.stopped && r.player.pending > 0;
    if (r.done && !audible) return;
    this.stats.bargeIns.push({ pending: r.player ? r.player.pending : 0, answering: !r.done });
    if (r.player) r.player.stop();
    r.cut = true;
    r.view.article.dataset.state = "cut";
    r.view.usage.before(el("p", { class: "hint cut", text: "Cut off: you spoke over it." }));
    this.panel.dataset.playing = "false";
  }

  heard(endMs) {
    if (!this.user) this.user = this.renderUser(endMs);
    const seconds = Math.max(0, endMs - this.user.startMs) / 1000;
    this.user.text.textContent = `${seconds.toFixed(1)} s`;
    this.user.article.setAttribute("aria-label", `You spoke for ${seconds.toFixed(1)} seconds`);
    this.user.article.dataset.state = "heard";
    this.user = null;
    this.turnEnded = performance.now();
    this.setState("thinking");
  }

  text(r, delta) {
    r.text += delta;
    r.view.text.append(delta);
    if (!this.voice && this.state === "thinking") {
      this.latency(r);
      this.setState("answering");
    }
    this.scrollDown();
  }

  audio(r, bytes) {
    if (r.firstAudio === null) {
      r.firstAudio = performance.now();
      this.latency(r);
    }
    if (r.cut || !r.player) return;
    const before = r.player.chunks;
    r.player.push(bytes);
    this.stats.scheduled += r.player.chunks - before;
    this.panel.dataset.chunks = String(this.stats.scheduled);
    if (this.state === "thinking" || this.state === "listening") this.setState("answering");
  }

  /** Turn latency: from the server saying the turn ended to the answer's first audio (or
   * first text without speech), as the page received them. */
  latency(r) {
    if (r.latency !== null || r.turnEnded === null) return;
    r.latency = performance.now() - r.turnEnded;
    this.stats.latencies.push(r.latency);
    $("talk-info").textContent = `${this.model} · answered ${Math.round(r.latency)} ms after your turn`;
  }

  done(r, response) {
    r.done = true;
    r.usage = response.usage || null;
    const status = response.status;
    if (status === "cancelled" && !r.cut) {
      r.cut = true;
      if (r.player) r.player.stop();
      this.finish(r, "cut", "Cut off: you spoke over it.");
    } else if (status === "failed" || status === "incomplete") {
      this.finish(r, "error", null);
    } else {
      this.finish(r, r.cut ? "cut" : "done", null);
    }
    if (this.state === "thinking") this.setState("listening");
  }

  finish(r, outcome, hint) {
    r.view.article.dataset.state = outcome;
    r.view.article.setAttribute("aria-busy", "false");
    if (hint) r.view.usage.before(el("p", { class: outcome === "cut" ? "hint cut" : "hint", text: hint }));
    const parts = [];
    const u = r.usage;
    if (u) {
      parts.push(`input ${u.input_tokens} (${tokens(u.input_tokens_details)})`);
      parts.push(`output ${u.output_tokens} (${tokens(u.output_tokens_details)})`);
    }
    if (r.latency !== null) parts.push(`${this.voice ? "first audio" : "first text"} ${Math.round(r.latency)} ms`);
    r.view.usage.textContent = parts.join(" · ");
  }

  error(error) {
    // A refused session.update leaves the session as it was.
    if (String(error.param || "").startsWith("session.") && this.created) this.updated(this.created);
    const message = error.message || "The server reported an error.";
    const text = error.code ? `${message} (${error.code})` : message;
    this.lastError = { text, at: performance.now() };
    const r = this.response;
    if (r && !r.done) {
      const meta = [error.code, error.param].filter(Boolean).join(" · ");
      r.view.error.replaceChildren(el("strong", { text: message }), meta ? el("span", { class: "meta", text: meta }) : null);
      r.view.error.hidden = false;
    } else {
      this.notice(`The server said: ${text}`);
    }
  }

  tick() {
    const r = this.response;
    const playing = Boolean(r && r.player && !r.player.stopped && r.player.pending > 0);
    this.panel.dataset.playing = String(playing);
    if (this.state === "answering" && r && r.done && !playing) this.setState("listening");
  }

  // ---- the page --------------------------------------------------------------------------

  mine() {
    return this.panel.dataset.session === this.id;
  }

  setState(name) {
    this.state = name;
    if (!this.mine()) return;
    this.panel.dataset.state = name;
    $("talk-state").textContent = LABELS[name];
    if (name === "connecting") $("talk-info").textContent = this.model;
  }

  setSocket(name) {
    if (this.mine()) this.panel.dataset.socket = name;
  }

  showLevel(level) {
    if (!this.mine()) return;
    // -60 dBFS and below is empty, 0 dBFS full.
    const db = level > 0 ? 20 * Math.log10(level) : -100;
    const percent = Math.round(Math.max(0, Math.min(100, ((db + 60) / 60) * 100)));
    const meter = $("talk-level");
    meter.setAttribute("aria-valuenow", String(percent));
    meter.firstElementChild.style.width = `${percent}%`;
  }

  scrollDown() {
    const log = $("log");
    log.scrollTop = log.scrollHeight;
  }

  divider(text) {
    const line = el("p", { class: "talk-divider", text });
    $("log").append(line);
    this.scrollDown();
    return line;
  }

  renderUser(startMs) {
    const text = el("span", { class: "spoken", text: "speaking…" });
    const article = el(
      "article",
      { class: "msg user talk", "data-state": "speaking", "aria-label": "You are speaking" },
      el("h3", { class: "who", text: "You" }),
      el("div", { class: "text" }, micIcon(), text),
    );
    $("log").append(article);
    this.scrollDown();
    return { article, text, startMs };
  }

  renderAssistant() {
    const text = el("div", { class: "text", "aria-live": "polite" });
    const usage = el("p", { class: "usage" });
    const error = el("div", { class: "error", role: "alert", hidden: "" });
    const who = this.voice ? `${this.model} · ${this.voice}` : this.model;
    const article = el(
      "article",
      { class: "msg assistant talk", "aria-busy": "true", "data-state": "streaming" },
      el("h3", { class: "who", text: who }),
      text,
      error,
      usage,
    );
    $("log").append(article);
    this.scrollDown();
    return {
      view: { article, text, usage, error },
      player: this.voice ? new PcmPlayer(this.ctx) : null,
      text: "",
      done: false,
      cut: false,
      usage: null,
      firstAudio: null,
      latency: null,
      turnEnded: this.turnEnded,
    };
  }
}
