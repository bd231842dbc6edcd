// The RoPE lesson without the DOM: the angle table's colours and labels, the score
// chart's coordinates and ticks, and the readout.

import {gridMove} from './attention-heads.js';
import {quoted} from './tokens.js';

const TAU = 2 * Math.PI;

// An angle in [0, 2π) as a hue on the colour wheel (cyclic, like the angle).
export function angleColor(radians) {
  const turn = ((radians % TAU) + TAU) % TAU / TAU;
  return `hsl(${Math.round(turn * 360) % 360} 70% 55%)`;
}

export const degrees = (radians) => (radians * 180 / Math.PI).toFixed(1);

export function angleText(data, p, i) {
  const pair = data.pairs[i];
  return `position ${data.angle_positions[p]}, pair ${pair.pair} (dims ${pair.dims[0]}, ${pair.dims[1]}): `
    + `angle ${data.angles[p][i]} rad (${degrees(data.angles[p][i])}°), wavelength ${pair.wavelength} tokens`;
}

export const angleMove = (cell, key, data) =>
  gridMove(cell, key, data.angle_positions.length, () => data.pairs.length);

// Round step ticks covering [lo, hi]: 1, 2 or 5 × 10^k, about `count` of them.
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) {
    const pad = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
    return niceTicks(lo - pad, hi + pad, count);
  }
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  const first = Math.floor(lo / step);
  const last = Math.ceil(hi / step);
  const ticks = [];
  for (let i = first; i <= last; i += 1) ticks.push(Number((i * step).toFixed(decimals)));
  return ticks;
}

export const CHART = {width: 640, height: 260, left: 56, right: 16, top: 14, bottom: 36};

const r2 = (x) => Math.round(x * 100) / 100;

// The score-vs-distance chart: the curve's path, axis ticks, the run's point and the
// level of the score without RoPE, all in SVG user units.
export function chartGeometry(data, size = CHART) {
  const {width, height, left, right, top, bottom} = size;
  const scores = data.scores;
  // the run's distance can lie past the curve's last one (max_distance)
  const maxD = Math.max(scores.length ? scores[scores.length - 1].distance : 0, data.distance);
  const values = [...scores.map((s) => s.score), data.score_in_run, data.score_without_rope];
  const yTicks = niceTicks(Math.min(...values), Math.max(...values));
  const yLo = yTicks[0];
  const yHi = yTicks[yTicks.length - 1];
  const x = (d) => r2(left + (width - left - right) * (maxD > 0 ? d / maxD : 0));
  const y = (s) => r2(top + (height - top - bottom) * (yHi - s) / (yHi - yLo));
  const xTicks = niceTicks(0, Math.max(1, maxD), 4).filter((d) => d <= maxD);
  return {
    width, height,
    path: scores.map((s, i) => `${i ? 'L' : 'M'}${x(s.distance)} ${y(s.score)}`).join(' '),
    xTicks: xTicks.map((d) => ({value: d, x: x(d)})),
    yTicks: yTicks.map((s) => ({value: s, y: y(s)})),
    run: {x: x(data.distance), y: y(data.score_in_run)},
    withoutRope: y(data.score_without_rope),
    x, y,
    plot: {x0: left, x1: width - right, y0: top, y1: height - bottom},
  };
}

// The score at distance d on the curve (the inspect slider).
export function scoreAt(data, d) {
  const s = data.scores.find((p) => p.distance === d);
  return s ? s.score : null;
}

export const pointText = (data, d) => `distance ${d}: score ${scoreAt(data, d)}`
  + (d === data.distance ? ' (the pair in the run)' : '');

function extremes(scores) {
  let lo = scores[0];
  let hi = scores[0];
  for (const s of scores) {
    if (s.score < lo.score) lo = s;
    if (s.score > hi.score) hi = s;
  }
  return {lo, hi};
}

export function wavelengthRange(data) {
  const w = data.pairs.map((p) => p.wavelength);
  return {min: Math.min(...w), max: Math.max(...w)};
}

export function readoutLines(data) {
  const {min, max} = wavelengthRange(data);
  const {lo, hi} = extremes(data.scores);
  const last = data.scores[data.scores.length - 1].distance;
  return [
    `RoPE: theta ${data.rope_theta}, head dim ${data.head_dim}, ${data.num_pairs} dimension pairs; `
      + `wavelengths ${min} to ${max} tokens`,
    `layer ${data.layer}, query head ${data.head} (KV head ${data.kv_head}); `
      + `query position ${data.query_position} ${quoted(data.tokens[data.query_position])}, `
      + `key position ${data.key_position} ${quoted(data.tokens[data.key_position])}, distance ${data.distance}`,
    `score in the run (post-RoPE q·k × scale): ${data.score_in_run}`,
    `score on the curve at distance ${data.distance}: ${data.score_at_distance}`,
    `score without RoPE (pre-RoPE q·k × scale): ${data.score_without_rope}`,
    `scores over distance 0–${last}: min ${lo.score} at distance ${lo.distance}, `
      + `max ${hi.score} at distance ${hi.distance}`,
  ];
}

export const readout = (data) => readoutLines(data).join('\n');
