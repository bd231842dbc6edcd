import {test} from 'node:test';
import assert from 'node:assert/strict';
import {launchBody, stepParts, stepBars, tableRows, readoutLines, ms, pct}
  from '../../kvscope/scope/static/js/logic/cuda-graphs.js';

const step = (i, wall, calls, decode = true) => ({
  step: i, decode_only: decode, num_tokens: 2, wall_ms: wall, schedule_ms: 0.1, prepare_ms: 0.2,
  forward_ms: wall - 0.5, sample_update_ms: 0.1, kernel_calls: calls, stack_runs: calls === 3 ? 1 : 0});
const median = (wall, calls) => ({wall_ms: wall, schedule_ms: 0.1, prepare_ms: 0.2,
  forward_ms: wall - 0.5, sample_update_ms: 0.1, kernel_calls: calls});
const RUN = {
  batch_size: 2, steps: 3, num_layers: 2,
  loop: {num_steps: 3, num_decode_steps: 2, stack_runs: 0, median: median(10, 22),
         steps: [step(0, 20, 22, false), step(1, 10, 22), step(2, 10, 22)]},
  stack: {num_steps: 3, num_decode_steps: 2, stack_runs: 2, median: median(8, 3),
          steps: [step(0, 20, 22, false), step(1, 8, 3), step(2, 8, 3)]},
  same_tokens: true, removed_ms: 2, removed_share: 0.2, calls_per_layer: 10,
  projection: {gpu: 'NVIDIA H100 SXM', eager_launches: 22, graph_launches: 3, launch_us: 5,
               eager_launch_us: 110, roofline_us: 80.5, eager_step_us: 110, graph_step_us: 80.5,
               removed_share: 0.2682},
};

test('the body is clamped to the route\'s bounds', () => {
  assert.deepEqual(launchBody({batchSize: 0, steps: 100}), {batch_size: 1, steps: 64});
  assert.deepEqual(launchBody({batchSize: '3', steps: 'x'}), {batch_size: 3, steps: 32});
});

test('other is the wall time no part accounts for', () => {
  assert.equal(stepParts(step(1, 10, 22)).other_ms.toFixed(6), '0.100000');
  assert.equal(stepParts({...step(1, 1, 22), forward_ms: 5}).other_ms, 0);
});

test('bars: decode steps only, scaled to the widest', () => {
  const [loop, stack] = stepBars(RUN);
  assert.equal(loop.bars.length, 2);
  assert.equal(loop.bars[0].segments.find((s) => s.key === 'forward_ms').share, 9.5 / 10);
  assert.equal(stack.bars[0].label, 'step 1: 8.00 ms, 3 kernel calls');
});

test('table and readout carry the response\'s figures', () => {
  const rows = tableRows(RUN);
  assert.deepEqual(rows[1], ['median wall time (ms)', '10.00', '8.00']);
  assert.deepEqual(rows.at(-1), ['kernel calls from Python per step', '22', '3']);
  const lines = readoutLines(RUN);
  assert.match(lines[3], /removed 2\.00 ms, 20\.0% of the loop's step/);
  assert.match(lines[5], /22 launches × 5 µs = 110\.0 µs/);
  assert.match(lines[5], /removing 26\.8% of it/);
  const slower = readoutLines({...RUN, removed_ms: -0.5, removed_share: -0.05});
  assert.match(slower[3], /added 0\.50 ms \(5\.0%\)/);
  assert.equal(ms(1), '1.00');
  assert.equal(pct(0.5), '50.0%');
});
