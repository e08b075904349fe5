'use strict';
// Action loop for Node.js actions, embedded in the action-runtime proxy (src/launchers/launcher.js).
//
// Usage: node launcher.js [<entry file> <main function name> <source|module>]
//   source: a text action, compiled here so that a plain `function main` works as in OpenWhisk;
//   module: a file from a zip, loaded with require() (or import() for ES modules).
//   Without arguments the launcher starts on standby, before its code exists (a prewarmed
//   container): its first stdin line names the code, {"entry", "main", "mode", "cwd", "env"}, and
//   `env` is set before the code loads.
//
// Protocol with the proxy:
//   fd 3:   one JSON line after loading ({"ok": true} or {"error": "..."}), then one per activation
//           ({"result": <value>} or {"error": "<String(err)>"}).
//   stdin:  one JSON line per activation: {"value": <params>, "env": {"__OW_...": "..."}}.
//           End of stdin means the proxy is gone: exit.
//   stdout, stderr: the action's logs; after each answer the end marker is written on both.

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const Module = require('module');
const { pathToFileURL } = require('url');

const END_MARKER = 'XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX';
const OUTCOME_FD = 3;
let [entry, mainName, mode] = process.argv.slice(2);

function describe(err) {
  if (err instanceof Error || (err && typeof err.name === 'string' && typeof err.message === 'string')) {
    return String(err);
  }
  if (err !== null && typeof err === 'object') {
    try {
      return JSON.stringify(err);
    } catch (_) {
      return String(err);
    }
  }
  return String(err);
}

// The head of a stack: for a syntax error this names the file and line and shows the culprit.
function describeLoadError(err) {
  if (err && typeof err.stack === 'string') {
    const head = [];
    for (const line of err.stack.split('\n')) {
      if (/^\s+at /.test(line)) break;
      head.push(line);
    }
    const text = head.join('\n').trim();
    if (text) return text;
  }
  return describe(err);
}

function send(outcome) {
  let line;
  try {
    line = JSON.stringify(outcome);
  } catch (err) {
    line = JSON.stringify({ error: describe(err) });
  }
  const buf = Buffer.from(line + '\n', 'utf8');
  let offset = 0;
  // Synchronous on purpose: the answer must be complete before the markers are written.
  while (offset < buf.length) {
    try {
      offset += fs.writeSync(OUTCOME_FD, buf, offset, buf.length - offset);
    } catch (err) {
      if (err.code !== 'EAGAIN') throw err;
    }
  }
}

// Resolves once both markers have been handed to the OS, so they follow everything logged before.
function endActivation() {
  return new Promise((resolve) => {
    let pending = 2;
    const done = () => {
      pending -= 1;
      if (pending === 0) resolve();
    };
    process.stdout.write(END_MARKER + '\n', done);
    process.stderr.write(END_MARKER + '\n', done);
  });
}

function pick(exported, plain) {
  const candidates = [];
  if (exported !== null && exported !== undefined) {
    candidates.push(exported[mainName]);
    if (exported.default !== null && exported.default !== undefined) {
      candidates.push(exported.default[mainName]);
    }
    if (mainName === 'main') {
      // module.exports = function (params) {...} and export default function.
      candidates.push(exported, exported.default);
    }
  }
  candidates.push(plain);
  return candidates.find((candidate) => typeof candidate === 'function');
}

async function importFile(file) {
  return import(pathToFileURL(file).href);
}

async function load() {
  if (mode !== 'source') {
    let exported;
    try {
      exported = require(entry);
    } catch (err) {
      if (err.code !== 'ERR_REQUIRE_ESM') throw err;
      exported = await importFile(entry);
    }
    return pick(exported, undefined);
  }
  const source = fs.readFileSync(entry, 'utf8');
  const m = new Module(entry, module);
  m.filename = entry;
  m.paths = Module._nodeModulePaths(path.dirname(entry));
  // A plain `function main` is not exported; this epilogue, compiled in the same scope, captures it.
  const capture = /^[A-Za-z_$][\w$]*$/.test(mainName)
    ? `\n;try { if (typeof ${mainName} === 'function') globalThis.__owPlainMain = ${mainName}; } catch (_) {}\n`
    : '\n';
  try {
    m._compile(source + capture, entry);
  } catch (err) {
    if (err instanceof SyntaxError && /\b(export|import)\b/.test(source)) {
      // An ES module as text: load it as one.
      const esm = entry.replace(/\.js$/, '') + '.mjs';
      fs.writeFileSync(esm, source);
      return pick(await importFile(esm), undefined);
    }
    throw err;
  }
  const plain = globalThis.__owPlainMain;
  delete globalThis.__owPlainMain;
  return pick(m.exports, plain);
}

function resetEnv(env) {
  for (const name of Object.keys(process.env)) {
    if (name.startsWith('__OW_')) delete process.env[name];
  }
  for (const [name, value] of Object.entries(env || {})) {
    process.env[name] = String(value);
  }
}

// On standby: waits for the line that names the code, and takes its directory and environment.
async function awaitCode(lines) {
  const first = await lines.next();
  if (first.done) process.exit(0);
  const code = JSON.parse(first.value);
  ({ entry, main: mainName, mode } = code);
  process.chdir(code.cwd);
  for (const [name, value] of Object.entries(code.env || {})) {
    process.env[name] = String(value);
  }
}

async function serve(main, lines) {
  for (;;) {
    const next = await lines.next();
    if (next.done) break;
    const line = next.value;
    if (line.trim() === '') continue;
    let outcome;
    try {
      const message = JSON.parse(line);
      resetEnv(message.env);
      const result = await main(message.value);
      outcome = { result: result === undefined ? null : result };
    } catch (err) {
      console.error(err);
      outcome = { error: describe(err) };
    }
    send(outcome);
    await endActivation();
  }
  // stdin closed: the proxy is gone or stopping us.
  process.exit(0);
}

(async () => {
  // One reader for the whole life of the process: the standby's first line and the activations.
  const lines = readline
    .createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false })
    [Symbol.asyncIterator]();
  let main;
  try {
    if (entry === undefined) await awaitCode(lines);
    main = await load();
    if (!main) throw new Error(`Action entrypoint '${mainName}' is not a function.`);
  } catch (err) {
    const message = describeLoadError(err);
    console.error(message);
    send({ error: message });
    await endActivation();
    process.exit(1);
  }
  send({ ok: true });
  await endActivation();
  await serve(main, lines);
})();
