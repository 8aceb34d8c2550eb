// Managed by homelab-as-code (files/openclaw-actr-memory/index.js): local changes are overwritten.
//
// OpenClaw plugin "actr-memory": the agents' long-term memory is actr-engine, the homelab's ACT-R
// memory service (files/actr-engine). Two agent tools:
//   actr_remember {content, tags?}  POST /chunks   {"content", "metadata"}
//   actr_recall   {cue, limit?}     POST /retrieve {"cue", "limit"} (ranked by ACT-R activation)
// Plain ESM on Node's standard library: no SDK import, no dependency to install (OpenClaw takes
// a default export with id and register(api), as definePluginEntry returns it).
// The bearer token is read at each call from the systemd credential named in the config
// ($CREDENTIALS_DIRECTORY/<tokenCredential>): never in openclaw.json, the environment or a
// command line, and a rotated token is used by the next call.

import { readFile } from "node:fs/promises";
import path from "node:path";

export const REMEMBER = "actr_remember";
export const RECALL = "actr_recall";
const MAX_CONTENT = 100_000; // characters: actr-engine refuses bodies over 1 MiB
const MAX_TAGS = 16;

const CONFIG_SCHEMA = {
  type: "object",
  additionalProperties: false,
  required: ["baseUrl", "tokenCredential"],
  properties: {
    baseUrl: { type: "string", pattern: "^https?://[^\\s/]+$" },
    tokenCredential: { type: "string", pattern: "^[A-Za-z0-9_.-]+$" },
    recallLimit: { type: "integer", minimum: 1, maximum: 1000 },
    timeoutMs: { type: "integer", minimum: 100, maximum: 600000 },
  },
};

/** The plugin's settings from plugins.entries["actr-memory"].config, checked. */
export function settings(config) {
  const given = config ?? {};
  const fail = (key, expected) => {
    throw new Error(
      `actr-memory: plugins.entries["actr-memory"].config.${key} is ` +
        `${JSON.stringify(given[key])}; expected ${expected}`,
    );
  };
  if (typeof given.baseUrl !== "string" || !/^https?:\/\/[^\s/]+$/.test(given.baseUrl)) {
    fail("baseUrl", 'an http(s) URL without a path, such as "http://127.0.0.1:8100"');
  }
  const name = given.tokenCredential;
  if (typeof name !== "string" || !/^[A-Za-z0-9_.-]+$/.test(name) || name.startsWith(".")) {
    fail("tokenCredential", 'a systemd credential name such as "actr-engine-token"');
  }
  const whole = (key, low, high, fallback) => {
    const value = given[key] ?? fallback;
    if (!Number.isInteger(value) || value < low || value > high) {
      fail(key, `a whole number from ${low} to ${high}`);
    }
    return value;
  };
  return {
    baseUrl: given.baseUrl,
    tokenCredential: name,
    recallLimit: whole("recallLimit", 1, 1000, 5),
    timeoutMs: whole("timeoutMs", 100, 600000, 10000),
  };
}

/** actr-engine's API token from the systemd credential the unit loads. */
export async function readToken(cfg, env) {
  const dir = env.CREDENTIALS_DIRECTORY;
  if (!dir) {
    throw new Error(
      "actr-memory: no $CREDENTIALS_DIRECTORY: the gateway must run under systemd with " +
        `LoadCredential=${cfg.tokenCredential}:<actr-engine's token file>`,
    );
  }
  const token = (await readFile(path.join(dir, cfg.tokenCredential), "utf8")).trim();
  if (!token) throw new Error(`actr-memory: the credential ${cfg.tokenCredential} is empty`);
  return token;
}

/** The body of POST /chunks: the memory and where it came from. */
export function rememberBody(params, ctx) {
  const content = typeof params?.content === "string" ? params.content.trim() : "";
  if (!content) throw new Error(`${REMEMBER}: content must be a non-empty text`);
  if (content.length > MAX_CONTENT) {
    throw new Error(`${REMEMBER}: content is ${content.length} characters; at most ${MAX_CONTENT}`);
  }
  const metadata = { source: "openclaw" };
  for (const key of ["agentId", "sessionKey"]) {
    if (typeof ctx?.[key] === "string" && ctx[key]) metadata[key] = ctx[key];
  }
  const tags = params?.tags ?? [];
  if (!Array.isArray(tags) || tags.length > MAX_TAGS || tags.some((t) => typeof t !== "string")) {
    throw new Error(`${REMEMBER}: tags must be a list of at most ${MAX_TAGS} texts`);
  }
  if (tags.length) metadata.tags = tags;
  return { content, metadata };
}

/** The body of POST /retrieve: the cue and a limit within the configured one. */
export function recallBody(params, cfg) {
  const cue = typeof params?.cue === "string" ? params.cue.trim() : "";
  if (!cue) throw new Error(`${RECALL}: cue must be a non-empty text`);
  const asked = params?.limit ?? cfg.recallLimit;
  if (!Number.isInteger(asked) || asked < 1) {
    throw new Error(`${RECALL}: limit must be a whole number of at least 1`);
  }
  return { cue, limit: Math.min(asked, cfg.recallLimit) };
}

/** What the model reads back from a retrieval. */
export function recallText(answer) {
  const chunks = Array.isArray(answer?.chunks) ? answer.chunks : [];
  if (!chunks.length) return "No memory came back for that cue.";
  const lines = chunks.map((chunk, index) => {
    const activation = Number(chunk.activation);
    const score = Number.isFinite(activation) ? activation.toFixed(3) : "?";
    return `${index + 1}. [memory ${chunk.id}, activation ${score}] ${chunk.content}`;
  });
  return `Memories, most active first:\n${lines.join("\n")}`;
}

/** POST a JSON body to actr-engine with the bearer token; its JSON answer, or an Error. */
export async function post(cfg, env, route, body, fetchImpl = fetch) {
  const token = await readToken(cfg, env);
  let response;
  try {
    response = await fetchImpl(cfg.baseUrl + route, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(cfg.timeoutMs),
    });
  } catch (error) {
    throw new Error(`actr-engine ${cfg.baseUrl}${route} did not answer: ${error.message}`);
  }
  const text = await response.text();
  let answer = {};
  try {
    answer = text ? JSON.parse(text) : {};
  } catch {
    answer = { error: text.slice(0, 200) };
  }
  if (!response.ok) {
    throw new Error(`actr-engine ${route}: HTTP ${response.status}: ${answer.error ?? "no detail"}`);
  }
  return answer;
}

function rememberTool(cfg, ctx, env) {
  return {
    name: REMEMBER,
    label: "Remember",
    // Short: OpenClaw lists deferred tools to local models with their descriptions cut short.
    description:
      "Store one durable memory (fact, decision, preference, outcome) in long-term ACT-R " +
      "memory; one self-contained statement per call.",
    parameters: {
      type: "object",
      additionalProperties: false,
      required: ["content"],
      properties: {
        content: { type: "string", description: "The memory, self-contained." },
        tags: { type: "array", items: { type: "string" }, description: "Optional labels." },
      },
    },
    async execute(_toolCallId, params) {
      const answer = await post(cfg, env, "/chunks", rememberBody(params, ctx));
      return {
        content: [{ type: "text", text: `Remembered as memory ${answer.id}.` }],
        details: { id: answer.id },
      };
    },
  };
}

function recallTool(cfg, ctx, env) {
  return {
    name: RECALL,
    label: "Recall",
    description:
      "Recall long-term memories about a cue from ACT-R memory, most active first (recent, " +
      "frequent, similar). Use before answering about earlier work or preferences.",
    parameters: {
      type: "object",
      additionalProperties: false,
      required: ["cue"],
      properties: {
        cue: { type: "string", description: "What to remember about, in words." },
        limit: {
          type: "integer",
          minimum: 1,
          maximum: cfg.recallLimit,
          description: `How many memories, at most ${cfg.recallLimit}.`,
        },
      },
    },
    async execute(_toolCallId, params) {
      const answer = await post(cfg, env, "/retrieve", recallBody(params, cfg));
      return {
        content: [{ type: "text", text: recallText(answer) }],
        details: { chunks: answer.chunks ?? [] },
      };
    },
  };
}

/** The agent tools for one tool context (what registerTool's factory returns). */
export function tools(cfg, ctx, env = process.env) {
  return [rememberTool(cfg, ctx, env), recallTool(cfg, ctx, env)];
}

export default {
  id: "actr-memory",
  name: "ACT-R memory (actr-engine)",
  description: "The agents remember into and recall from actr-engine.",
  configSchema: CONFIG_SCHEMA,
  register(api) {
    const cfg = settings(api.pluginConfig); // a bad config fails the plugin's load, named
    api.registerTool((ctx) => tools(cfg, ctx), { names: [REMEMBER, RECALL] });
  },
};
