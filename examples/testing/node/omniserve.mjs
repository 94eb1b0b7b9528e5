// Start omniserve for a Node.js test suite and wait until it is ready.
//
//   import { startOmniserve } from "./omniserve.mjs";
//   const server = await startOmniserve({ rules: [...] });
//   const client = new OpenAI({ apiKey: server.apiKey, baseURL: server.baseURL });
//   ...
//   server.setRules([...]);   // the next request sees them
//   await server.stop();
//
// It runs the omniserve command (OMNISERVE_COMMAND, or `omniserve` on the PATH) on a free
// loopback port with no pacing, an empty data directory of its own and a rules file it can
// rewrite, and resolves once GET /readyz answers 200. Copy it into your project as it is.

import { spawn } from "node:child_process";
import { mkdtempSync, renameSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const API_KEY = "sk-omniserve-test"; // a loopback server without keys takes any key

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.unref();
    probe.on("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

let stamp = 0;

function writeRules(path, rules) {
  const temporary = `${path}.tmp`;
  writeFileSync(temporary, JSON.stringify({ rules: rules ?? [] }));
  renameSync(temporary, path);
  // The server notices a change by the file's time and size: make the time differ.
  const now = Date.now() / 1000 + ++stamp / 1000;
  utimesSync(path, now, now);
}

export async function startOmniserve({
  rules = [],
  args = [],
  command = process.env.OMNISERVE_COMMAND ?? "omniserve",
  readyMs = 60_000,
  env = {},
} = {}) {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "omniserve-"));
  const rulesPath = join(dir, "rules.json");
  writeRules(rulesPath, rules);
  const [program, ...prefix] = command.split(" ").filter(Boolean);
  const child = spawn(
    program,
    [
      ...prefix,
      "serve",
      "--port", String(port),
      "--tokens-per-second", "0",
      "--first-token-ms", "0",
      "--no-playground",
      "--data-dir", join(dir, "data"),
      "--rules", rulesPath,
      ...args,
    ],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } },
  );
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  let exited = null;
  const ended = new Promise((resolve) =>
    child.on("exit", (code, signal) => {
      exited = { code, signal };
      resolve();
    }),
  );
  child.on("error", (err) => {
    exited = { code: null, signal: null, error: err };
  });

  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + readyMs;
  for (;;) {
    if (exited) {
      rmSync(dir, { recursive: true, force: true });
      const why = exited.error ? exited.error.message : `exit code ${exited.code}`;
      throw new Error(`omniserve did not start (${why}):\n${output}`);
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`omniserve was not ready within ${readyMs} ms:\n${output}`);
    }
    try {
      const response = await fetch(`${url}/readyz`);
      if (response.status === 200) break;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }

  return {
    url,
    baseURL: `${url}/compatible-mode/v1`,
    apiKey: API_KEY,
    setRules: (next) => writeRules(rulesPath, next),
    output: () => output,
    async stop() {
      if (!exited) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await ended;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
