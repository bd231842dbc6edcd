// The tokens lesson without the DOM: chip labels with visible whitespace, the counts,
// the KV-cache cost and the readout, plus two small helpers every "inside" page uses
// (a debounce and a runner that keeps at most one request in flight).

import {int} from '../format.js';

const WHITESPACE = {' ': '·', '\n': '↵', '\t': '⇥', '\r': '␍'};

// A token's text with its whitespace made visible: space ·, newline ↵, tab ⇥,
// carriage return ␍, other C0 controls as their control pictures (U+2400 + code).
export function showWhitespace(text) {
  if (text === '') return '∅';
  let out = '';
  for (const ch of text) {
    const code = ch.codePointAt(0);
    if (ch in WHITESPACE) out += WHITESPACE[ch];
    else if (code < 0x20) out += String.fromCodePoint(0x2400 + code);
    else if (code === 0x7f) out += '␡';
    else out += ch;
  }
  return out;
}

// A string as the readout prints it: JSON, so every space and newline shows.
export const quoted = (text) => JSON.stringify(text);

// Raw bytes as two-digit lowercase hex: [32, 226] -> "20 e2"
export function hexBytes(values) {
  return values.map((b) => b.toString(16).padStart(2, '0')).join(' ');
}

// What a chip says to a screen reader, and the detail line on hover or focus.
export function chipLabel(tok, index) {
  const kind = tok.special ? ', special token' : '';
  const n = tok.bytes.length;
  return `token ${index}: ${quoted(tok.text)}, id ${tok.id}${kind}, `
    + `${n} byte${n === 1 ? '' : 's'}: ${hexBytes(tok.bytes)}`;
}

// The KV cache cost of one token, spelled out: 2 (K and V) × layers × KV heads × head
// dim × bytes per value.
export function kvFormula(kv) {
  return `2 × ${kv.num_layers} layers × ${kv.num_kv_heads} KV heads × ${kv.head_dim} head dim`
    + ` × ${kv.dtype_bytes} bytes (${kv.dtype}) = ${int(kv.kv_bytes_per_token)} bytes per token`;
}

export function kvTotal(data) {
  const {kv} = data;
  return `${data.num_tokens} token${data.num_tokens === 1 ? '' : 's'} × `
    + `${int(kv.kv_bytes_per_token)} bytes = ${int(kv.kv_bytes)} bytes`;
}

// The request body the form describes.
export function tokensBody({text, chat, system}) {
  const body = {text, chat: Boolean(chat)};
  if (chat && system && system.trim() !== '') body.system = system;
  return body;
}

export function readoutLines(data, {system = false} = {}) {
  const mode = data.chat
    ? `chat message${system ? ' with a system message' : ''}, the model's chat template applied`
    : 'plain text';
  return [
    `mode: ${mode}`,
    `tokens: ${data.num_tokens} (${data.num_special} special)`,
    `characters: ${data.num_chars}, bytes: ${data.num_bytes}`,
    `pieces: ${data.tokens.map((t) => `${quoted(t.text)} ${t.id}`).join(' | ')}`,
    `special: ${data.tokens.filter((t) => t.special).map((t) => quoted(t.text)).join(', ') || 'none'}`,
    `KV cache: ${kvTotal(data)}`,
    `per token: ${kvFormula(data.kv)}`,
  ];
}

export const readout = (data, options) => readoutLines(data, options).join('\n');

// fn runs `ms` after the last call (the arguments of that last call).
export function debounce(fn, ms, timers = globalThis) {
  let timer = null;
  const call = (...args) => {
    if (timer !== null) timers.clearTimeout(timer);
    timer = timers.setTimeout(() => {
      timer = null;
      fn(...args);
    }, ms);
  };
  call.cancel = () => {
    if (timer !== null) timers.clearTimeout(timer);
    timer = null;
  };
  return call;
}

// Wraps an async `run()` so at most one is in flight: a call while one runs asks for
// one more run after it (however many calls came meanwhile), so the last run always
// sees the latest input. The server runs one lesson job at a time (429 when busy).
// With `inputKey` (what the input is now, e.g. the request body as JSON), a call made
// while a run for that same input is in flight adds nothing (pressing Enter in a number
// box fires both change and submit). Returns trigger(); it resolves when the runs it
// caused are done.
export function latestOnly(run, inputKey = null) {
  let active = null;
  let again = false;
  let runningKey;
  const loop = async () => {
    do {
      again = false;
      runningKey = inputKey?.();
      try {
        await run();
      } catch { /* run reports its own failures */ }
    } while (again);
    active = null;
  };
  return () => {
    if (active) {
      if (!inputKey || inputKey() !== runningKey) again = true;
      return active;
    }
    active = loop();
    return active;
  };
}
