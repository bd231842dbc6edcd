// The embeddings lesson without the DOM: the heat strip's colour scale, what a cell
// says, the slice control's bounds and the readout.

import {BLUE, ORANGE, WHITE, gridMove, mix} from './attention-heads.js';
import {quoted} from './tokens.js';

export const DIM_COUNTS = [8, 16, 32, 64];

// A value's colour on a diverging scale: blue for negative, white at 0, orange for
// positive, full colour at ±absMax.
export function heatColor(value, absMax) {
  if (!(absMax > 0)) return 'rgb(255, 255, 255)';
  const t = value / absMax;
  return t < 0 ? mix(WHITE, BLUE, -t) : mix(WHITE, ORANGE, t);
}

export function cellText(data, row, col) {
  const r = data.rows[row];
  return `token ${r.position} ${quoted(r.text)} (id ${r.id}), dim ${data.dim_start + col}: ${r.slice[col]}`;
}

export const stripMove = (cell, key, data) =>
  gridMove(cell, key, data.rows.length, () => data.dim_count);

// The largest dim_start that still fits dim_count dims.
export const maxStart = (hiddenSize, dimCount) => Math.max(0, hiddenSize - dimCount);

// dim_start clamped into range (the slider and the number box both end up here).
export function clampStart(start, hiddenSize, dimCount) {
  const s = Number.isFinite(start) ? Math.trunc(start) : 0;
  return Math.max(0, Math.min(maxStart(hiddenSize, dimCount), s));
}

export function sliceLabel(data) {
  const end = data.dim_start + data.dim_count - 1;
  return `dims ${data.dim_start}–${end} of ${data.hidden_size}`;
}

export function neighboursText(row) {
  return row.neighbours.map((n) => `${quoted(n.text)} ${n.cosine}`).join(', ');
}

export function rowLine(row) {
  return `${row.position} ${quoted(row.text)} (id ${row.id}): norm ${row.norm}; nearest: ${neighboursText(row)}`;
}

export function readoutLines(data) {
  return [
    `tokens: ${data.rows.length}; hidden size ${data.hidden_size}, vocabulary ${data.vocab_size}`,
    `slice: ${sliceLabel(data)} (${data.dim_count} shown), largest |value| ${data.slice_abs_max}`,
    ...data.rows.map(rowLine),
  ];
}

export const readout = (data) => readoutLines(data).join('\n');
