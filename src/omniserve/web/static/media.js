// What a user attaches, as the API's content parts. Files travel as data URLs; pasted links
// travel as they are and the server fetches them. The server checks every rule again; these
// checks only say so before a large upload.

import { toWav16k } from "./audio.js";

const AUDIO_FORMATS = {
  "audio/wav": "wav",
  "audio/x-wav": "wav",
  "audio/wave": "wav",
  "audio/vnd.wave": "wav",
  "audio/mpeg": "mp3",
  "audio/mp3": "mp3",
  "audio/aac": "aac",
  "audio/x-aac": "aac",
  "audio/amr": "amr",
  "audio/3gpp": "3gp",
  "audio/flac": "flac",
  "audio/x-flac": "flac",
  "audio/mp4": "m4a",
  "audio/x-m4a": "m4a",
  "audio/ogg": "ogg",
};
const EXTENSIONS = {
  image: ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "heic", "gif"],
  audio: ["wav", "mp3", "aac", "amr", "3gp", "3gpp", "flac", "m4a", "ogg", "opus"],
  video: ["mp4", "mov", "avi", "mkv", "flv", "wmv", "webm"],
};
// An image larger than this is re-encoded in the browser before it is sent: the model sees
// at most about 1,300 tokens of 32 px anyway.
const IMAGE_MAX_SIDE = 2048;

export class AttachError extends Error {}

export function kindOfName(name) {
  const ext = name.split(/[?#]/)[0].split(".").pop().toLowerCase();
  for (const [kind, list] of Object.entries(EXTENSIONS)) if (list.includes(ext)) return kind;
  return null;
}

function kindOfFile(file) {
  const major = (file.type || "").split("/")[0];
  if (["image", "audio", "video"].includes(major)) return major;
  return kindOfName(file.name);
}

function readDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.addEventListener("load", () => resolve(reader.result));
    reader.addEventListener("error", () => reject(reader.error));
    reader.readAsDataURL(blob);
  });
}

export function megabytes(n) {
  return `${(n / 1048576).toFixed(1)} MB`;
}

async function shrinkImage(file, limit) {
  const bitmap = await createImageBitmap(file);
  const scale = Math.min(1, IMAGE_MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  for (const quality of [0.9, 0.8, 0.65]) {
    const url = canvas.toDataURL("image/jpeg", quality);
    if (url.length <= limit) return url;
  }
  throw new AttachError(`${file.name} is too large even after resizing.`);
}

/**
 * An attachment from a file: {kind, name, size, url (data URL), preview (blob URL), format,
 * note}. ``limits`` is the model's media_limits.
 */
export async function fromFile(file, limits) {
  const kind = kindOfFile(file);
  if (!kind) {
    throw new AttachError(`${file.name}: not an image, audio or video file.`);
  }
  const cap = limits.data_uri_max_bytes;
  const attachment = { kind, name: file.name, size: file.size, preview: URL.createObjectURL(file) };
  if (kind === "audio") {
    const ext = file.name.split(".").pop().toLowerCase();
    let format = AUDIO_FORMATS[(file.type || "").split(";")[0]] || (kindOfName(file.name) === "audio" ? ext : null);
    let blob = file;
    if (!format || format === "opus" || format === "webm") {
      // Containers the API does not take (WebM, bare Opus): converted here.
      const converted = await toWav16k(file);
      blob = converted.blob;
      format = "wav";
      attachment.note = "converted to 16 kHz WAV";
    }
    attachment.format = format;
    attachment.url = await readDataUrl(blob);
  } else {
    attachment.url = await readDataUrl(file);
  }
  if (attachment.url.length > cap) {
    if (kind === "image") {
      attachment.url = await shrinkImage(file, cap);
      attachment.note = "resized to fit the data URL limit";
    } else {
      URL.revokeObjectURL(attachment.preview);
      throw new AttachError(
        `${file.name} is ${megabytes(file.size)}; as a data URL the API takes at most ` +
          `${megabytes(cap)}, base64 included (about ${megabytes((cap * 3) / 4)} of file). ` +
          "Put it on a web server and add its URL instead.",
      );
    }
  }
  return attachment;
}

/** An attachment from a recording (already a 16 kHz WAV blob). */
export async function fromRecording(blob, seconds) {
  return {
    kind: "audio",
    name: `recording (${seconds.toFixed(1)} s).wav`,
    size: blob.size,
    preview: URL.createObjectURL(blob),
    url: await readDataUrl(blob),
    format: "wav",
  };
}

/** An attachment from a pasted link; ``kind`` "auto" guesses from the file name. */
export function fromUrl(text, kind) {
  let url;
  try {
    url = new URL(text.trim());
  } catch {
    throw new AttachError("That is not a URL.");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new AttachError("Only http and https URLs can be sent; the server fetches them.");
  }
  const chosen = kind === "auto" ? kindOfName(url.pathname) : kind;
  if (!chosen) {
    throw new AttachError("Which kind of media is this? Choose image, audio or video.");
  }
  const name = decodeURIComponent(url.pathname.split("/").pop() || url.host);
  const attachment = { kind: chosen, name, size: null, url: url.href, remote: true };
  if (chosen === "audio") {
    attachment.format = kindOfName(name) === "audio" ? name.split(".").pop().toLowerCase() : "wav";
  }
  return attachment;
}

/**
 * Adds ``incoming`` to ``current`` under the API's rules for one user message: one kind of
 * media (images, one audio, one video, or a frame list), at most ``frames_max`` images.
 */
export function combine(current, incoming, limits) {
  const all = [...current, ...incoming];
  const kinds = new Set(all.map((a) => a.kind));
  if (kinds.size > 1) {
    throw new AttachError(
      "One kind of media per message: images, one audio clip, or one video. " +
        "Remove what is attached first, or send it in its own message.",
    );
  }
  const [kind] = kinds;
  if ((kind === "audio" || kind === "video") && all.length > 1) {
    throw new AttachError(`One ${kind === "audio" ? "audio clip" : "video"} per message.`);
  }
  if (kind === "image" && all.length > limits.frames_max) {
    throw new AttachError(`At most ${limits.frames_max} images in one message.`);
  }
  return all;
}

/** The user message's content: a plain string without media, else media parts then text. */
export function userContent(text, attachments, asFrames) {
  if (attachments.length === 0) return text;
  const parts = [];
  const kind = attachments[0].kind;
  if (kind === "image" && asFrames) {
    parts.push({ type: "video", video: attachments.map((a) => a.url) });
  } else if (kind === "image") {
    for (const a of attachments) parts.push({ type: "image_url", image_url: { url: a.url } });
  } else if (kind === "audio") {
    const a = attachments[0];
    parts.push({ type: "input_audio", input_audio: { data: a.url, format: a.format } });
  } else {
    parts.push({ type: "video_url", video_url: { url: attachments[0].url } });
  }
  if (text) parts.push({ type: "text", text });
  return parts;
}

const PLACEHOLDER = {
  input_audio: "[an earlier audio clip, not sent again: one audio clip per request]",
  video_url: "[an earlier video, not sent again: one video per request]",
};

/**
 * The conversation as sent: the newest audio clip and video file stay, older ones become a
 * short text, because the API takes one of each per request. Returns [messages, dropped].
 */
export function withinRequestLimits(messages, limits) {
  const budget = { input_audio: limits.audio_per_request, video_url: limits.video_per_request };
  let dropped = 0;
  const out = [];
  for (let i = messages.length - 1; i >= 0; i--) {
    const message = messages[i];
    if (!Array.isArray(message.content)) {
      out.push(message);
      continue;
    }
    const parts = [];
    for (let j = message.content.length - 1; j >= 0; j--) {
      const part = message.content[j];
      if (part.type in budget) {
        if (budget[part.type] > 0) {
          budget[part.type] -= 1;
        } else {
          parts.unshift({ type: "text", text: PLACEHOLDER[part.type] });
          dropped += 1;
          continue;
        }
      }
      parts.unshift(part);
    }
    out.push({ ...message, content: parts });
  }
  return [out.reverse(), dropped];
}
