// The RoPE lesson's logic (js/logic/rope.js) on a hand-made response that follows the
// /scope/api/inside/rope contract.
import {test} from 'node:test';
import assert from 'node:assert/strict';

import {angleColor, angleMove, angleText, chartGeometry, degrees, niceTicks, pointText, readout,
  scoreAt, wavelengthRange} from '../../kvscope/scope/static/js/logic/rope.js';

const DATA = {
  rope_theta: 100000, head_dim: 4, num_pairs: 2,
  pairs: [{pair: 0, dims: [0, 2], inv_freq: 1, wavelength: 6.28319},
          {pair: 1, dims: [1, 3], inv_freq: 0.00316228, wavelength: 1986.92}],
  angle_positions: [0, 1, 2, 4],
  angles: [[0, 0], [1, 0.00316228], [2, 0.00632456], [4, 0.0126491]],
  tokens: ['The', ' cat', ' sat', ' down'], layer: 2, head: 5, kv_head: 1,
  query_position: 3, key_position: 1, distance: 2,
  scores: [{distance: 0, score: 1.5}, {distance: 1, score: 0.5}, {distance: 2, score: -0.5},
           {distance: 3, score: 0.5}, {distance: 4, score: -0.5}],
  score_in_run: -0.5, score_at_distance: -0.5, score_without_rope: 2,
};

test('angle colours go round the wheel', () => {
  assert.equal(angleColor(0), 'hsl(0 70% 55%)');
  assert.equal(angleColor(Math.PI), 'hsl(180 70% 55%)');
  assert.equal(angleColor(Math.PI / 2), 'hsl(90 70% 55%)');
  assert.equal(angleColor(2 * Math.PI - 1e-9), 'hsl(0 70% 55%)');
  assert.equal(angleColor(-Math.PI / 2), 'hsl(270 70% 55%)');
  assert.equal(degrees(Math.PI / 3), '60.0');
});

test('what an angle cell says, and the arrow keys', () => {
  assert.equal(angleText(DATA, 2, 1),
    'position 2, pair 1 (dims 1, 3): angle 0.00632456 rad (0.4°), wavelength 1986.92 tokens');
  assert.equal(angleText(DATA, 1, 0),
    'position 1, pair 0 (dims 0, 2): angle 1 rad (57.3°), wavelength 6.28319 tokens');
  assert.deepEqual(angleMove({row: 3, col: 1}, 'ArrowDown', DATA), {row: 3, col: 1});
  assert.deepEqual(angleMove({row: 3, col: 0}, 'ArrowRight', DATA), {row: 3, col: 1});
  assert.deepEqual(angleMove({row: 3, col: 1}, 'PageUp', DATA), {row: 0, col: 1});
});

test('nice ticks', () => {
  assert.deepEqual(niceTicks(-0.5, 2), [-0.5, 0, 0.5, 1, 1.5, 2]);
  assert.deepEqual(niceTicks(0, 256, 4), [0, 100, 200, 300]);
  assert.deepEqual(niceTicks(0.013, 0.087), [0, 0.02, 0.04, 0.06, 0.08, 0.1]);
  assert.deepEqual(niceTicks(-3.7, 11.2), [-5, 0, 5, 10, 15]);
  assert.deepEqual(niceTicks(2, 2), [1.8, 1.9, 2, 2.1, 2.2]);
  assert.deepEqual(niceTicks(0, 0), [-1, -0.5, 0, 0.5, 1]);
});

test('chart geometry', () => {
  const g = chartGeometry(DATA);
  // plot box: x 56..624 (568 wide), y 14..224 (210 high); y range -0.5..2 from the ticks
  assert.deepEqual(g.yTicks.map((t) => t.value), [-0.5, 0, 0.5, 1, 1.5, 2]);
  assert.deepEqual(g.yTicks.map((t) => t.y), [224, 182, 140, 98, 56, 14]);
  assert.deepEqual(g.xTicks, [{value: 0, x: 56}, {value: 1, x: 198}, {value: 2, x: 340},
    {value: 3, x: 482}, {value: 4, x: 624}]);
  assert.equal(g.path, 'M56 56 L198 140 L340 224 L482 140 L624 224');
  assert.deepEqual(g.run, {x: 340, y: 224});
  assert.equal(g.withoutRope, 14);
  assert.deepEqual(g.plot, {x0: 56, x1: 624, y0: 14, y1: 224});
  // 256 distances: ticks every 100, none past the end
  const long = {...DATA, distance: 7, scores: Array.from({length: 257}, (_, d) => ({distance: d, score: d % 2}))};
  const gl = chartGeometry(long);
  assert.deepEqual(gl.xTicks.map((t) => t.value), [0, 100, 200]);
  assert.equal(gl.xTicks[1].x, 277.88);  // 56 + 568 × 100/256, to 2 decimals
});

test('the inspect line and the readout', () => {
  assert.equal(scoreAt(DATA, 3), 0.5);
  assert.equal(scoreAt(DATA, 9), null);
  assert.equal(pointText(DATA, 0), 'distance 0: score 1.5');
  assert.equal(pointText(DATA, 2), 'distance 2: score -0.5 (the pair in the run)');
  assert.deepEqual(wavelengthRange(DATA), {min: 6.28319, max: 1986.92});
  assert.equal(readout(DATA), [
    'RoPE: theta 100000, head dim 4, 2 dimension pairs; wavelengths 6.28319 to 1986.92 tokens',
    'layer 2, query head 5 (KV head 1); query position 3 " down", key position 1 " cat", distance 2',
    'score in the run (post-RoPE q·k × scale): -0.5',
    'score on the curve at distance 2: -0.5',
    'score without RoPE (pre-RoPE q·k × scale): 2',
    'scores over distance 0–4: min -0.5 at distance 2, max 1.5 at distance 0',
  ].join('\n'));
});

test('a run distance past max_distance widens the x axis', () => {
  const far = {...DATA, distance: 8, score_in_run: 0};
  const g = chartGeometry(far);
  assert.deepEqual(g.xTicks.map((t) => t.value), [0, 2, 4, 6, 8]);
  assert.deepEqual(g.run, {x: 624, y: 182});
  assert.equal(g.path, 'M56 56 L127 140 L198 224 L269 140 L340 224');
});
