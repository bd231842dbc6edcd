// The attention-heads lesson without the DOM: the heatmap's colours, which cell a key
// press moves to, what a cell says, the GQA group and KV sizes, and the readout.
// gridMove and mix are shared with the embeddings and RoPE pages.

import {int} from '../format.js';
import {quoted} from './tokens.js';

// Colours as [r, g, b]; mix(a, b, t) is the colour t of the way from a to b.
export const WHITE = [255, 255, 255];
export const BLUE = [0, 114, 178];    // --r4
export const ORANGE = [213, 94, 0];   // --r5

export function mix(a, b, t) {
  const c = Math.max(0, Math.min(1, t));
  const [r, g, bl] = a.map((x, i) => Math.round(x + (b[i] - x) * c));
  return `rgb(${r}, ${g}, ${bl})`;
}

// An attention weight's colour: white at 0, blue at 1, by √weight so that the small
// weights most keys get still show.
export const weightColor = (w) => mix(WHITE, BLUE, Math.sqrt(Math.max(0, w)));

// The cell a key press moves to in a grid of `rows` rows, where row r has
// rowLength(r) cells (a lower triangle: r + 1). Returns null for other keys.
export function gridMove({row, col}, key, rows, rowLength) {
  const last = (r) => rowLength(r) - 1;
  const clampCol = (r, c) => Math.max(0, Math.min(last(r), c));
  switch (key) {
    case 'ArrowLeft': return {row, col: Math.max(0, col - 1)};
    case 'ArrowRight': return {row, col: Math.min(last(row), col + 1)};
    case 'ArrowUp': { const r = Math.max(0, row - 1); return {row: r, col: clampCol(r, col)}; }
    case 'ArrowDown': { const r = Math.min(rows - 1, row + 1); return {row: r, col: clampCol(r, col)}; }
    case 'Home': return {row, col: 0};
    case 'End': return {row, col: last(row)};
    case 'PageUp': return {row: 0, col: clampCol(0, col)};
    case 'PageDown': return {row: rows - 1, col: clampCol(rows - 1, col)};
    default: return null;
  }
}

export const triangleMove = (cell, key, n) => gridMove(cell, key, n, (r) => r + 1);

// What a cell of the matrix says (its aria-label and the detail line).
export function cellText(data, q, k) {
  return `query ${q} ${quoted(data.tokens[q])} → key ${k} ${quoted(data.tokens[k])}: `
    + `weight ${data.probs[q][k]}`;
}

export const list = (xs) => xs.map(String).join(', ');

export function groupLine(data) {
  const others = data.group.length === 1 ? 'no other query head shares it'
    : `shared by query heads ${list(data.group)}`;
  return `query head ${data.head} reads KV head ${data.kv_head} of ${data.num_kv_heads}: ${others}`;
}

export function kvLine(data) {
  const {kv} = data;
  return `KV cache per token: ${int(kv.kv_bytes_per_token)} bytes with GQA `
    + `(${data.num_kv_heads} KV heads), ${int(kv.kv_bytes_per_token_without_gqa)} bytes without `
    + `(${data.num_heads}): ${kv.ratio}× smaller`;
}

export function readoutLines(data) {
  const lines = [
    `prompt: ${data.tokens.length} tokens; layer ${data.layer} of ${data.num_layers}, `
      + `query head ${data.head} of ${data.num_heads}, head dim ${data.head_dim}`,
    groupLine(data),
    kvLine(data),
    'strongest key per query:',
  ];
  data.row_max.forEach((m, q) => {
    lines.push(`  ${q} ${quoted(data.tokens[q])} → ${m.key} ${quoted(data.tokens[m.key])}: ${m.weight}`);
  });
  return lines;
}

export const readout = (data) => readoutLines(data).join('\n');

// Clamp a typed layer or head to [0, count - 1] (NaN: 0).
export function clampIndex(value, count) {
  if (!Number.isFinite(value)) return 0;
  return Math.max(0, Math.min(count - 1, Math.trunc(value)));
}
