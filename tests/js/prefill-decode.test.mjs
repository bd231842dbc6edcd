// The prefill-vs-decode lesson's DOM-free logic (js/logic/prefill-decode.js), on a
// hand-made response that follows the /scope/api/inside/phases contract.
import {test} from 'node:test';
import assert from 'node:assert/strict';

import {boundBy, decadeDomain, decadeTicks, gpuLine, logScale, machineLine, phaseGroups, phaseLabels, readoutLines,
  roofline, stepBars, tickText} from '../../kvscope/scope/static/js/logic/prefill-decode.js';

const step = (i, phase, n, ctx, ms, intensity, gflops) => ({
  step: i, phase, num_tokens: n, context_len: ctx, time_ms: ms, flops: 1, weight_bytes: 1, kv_bytes: 1,
  bytes: 1, intensity, gflops_per_s: gflops, gb_per_s: 10,
});

const response = {
  prompt_tokens: 8,
  steps: [step(0, 'prefill', 8, 8, 40, 4, 50), step(1, 'decode', 1, 9, 10, 0.5, 5),
          step(2, 'decode', 1, 10, 20, 0.5, 5)],
  model: {weight_bytes: 538000000, params: 134515008, dtype: 'float32', flops_per_token: 269030000},
  machine: {peak_gflops: 200, bandwidth_gbs: 20, ridge: 10, method: 'a 1024x1024 fp32 matmul; a 256 MiB copy',
            cpu: 'Test CPU', measured: true},
  gpu: {name: 'NVIDIA H100 SXM', peak_gflops: 989000, bandwidth_gbs: 3350, ridge: 295.224,
        source: 'the published spec sheet', measured: false},
  summary: {prefill_ms: 40, decode_ms_mean: 15, prefill_intensity: 4, decode_intensity_mean: 0.5},
};

test('steps grouped by phase', () => {
  const g = phaseGroups(response.steps);
  assert.deepEqual(g.prefill.map((s) => s.step), [0]);
  assert.deepEqual(g.decode.map((s) => s.step), [1, 2]);
});

test('step bars: time and tokens, each against its largest', () => {
  const chart = stepBars(response.steps, {width: 300, band: 40, top: 10, gap: 20});
  assert.equal(chart.top2, 70);
  assert.deepEqual(chart.bars.map((b) => [b.x, b.w, b.phase]), [[1, 98, 'prefill'], [101, 98, 'decode'], [201, 98, 'decode']]);
  assert.deepEqual(chart.bars.map((b) => b.time), [{y: 10, h: 40}, {y: 40, h: 10}, {y: 30, h: 20}]);
  assert.deepEqual(chart.bars.map((b) => b.tokens), [{y: 70, h: 40}, {y: 105, h: 5}, {y: 105, h: 5}]);
  assert.equal(chart.bars[1].label, 'step 1 (decode): 1 tokens, context 9, 10 ms');
});

test('log scales and decades', () => {
  const x = logScale([0.1, 100], [20, 320]);
  assert.deepEqual([x(0.1), x(1), x(10), x(100)], [20, 120, 220, 320]);
  assert.deepEqual(decadeDomain([0.5, 4, 2.5, 40]), [0.1, 100]);
  assert.deepEqual(decadeDomain([3, 3]), [1, 10]);
  assert.deepEqual(decadeDomain([0, -1, 5]), [1, 10]);
  assert.deepEqual(decadeTicks([0.1, 100]), [0.1, 1, 10, 100]);
  assert.deepEqual([0.01, 1, 10000, 100000, 989000].map(tickText).slice(0, 4), ['1e-2', '1', '1e4', '1e5']);
});

test('bound by memory below the ridge, by compute at or above it', () => {
  assert.equal(boundBy(0.5, 10), 'memory-bound');
  assert.equal(boundBy(10, 10), 'compute-bound');
});

test('roofline of this machine: roof, ridge and the measured steps', () => {
  const r = roofline(response.machine, response.steps,
                     {measured: true, width: 320, height: 320, left: 20, right: 0, top: 20, bottom: 0});
  assert.deepEqual(r.xDomain, [0.1, 100]);  // intensities 0.5..4 and ridge/4..ridge*4
  assert.deepEqual(r.yDomain, [1, 1000]);   // roof from 2 (20 GB/s at 0.1) to 200, steps 5..50
  // x = 20 + 100 (log10 i + 1), y = 320 - 100 log10 g
  assert.equal(r.roof, '20,289.9 220,89.9 320,89.9');
  assert.deepEqual(r.ridge, {x: 220, y: 89.9, value: 10});
  assert.deepEqual(r.dots.map((d) => [d.x, d.y, d.projected]),
                   [[180.21, 150.1, false], [89.9, 250.1, false], [89.9, 250.1, false]]);
  assert.equal(r.dots[0].label, 'step 0 (prefill): 4 FLOP/byte, measured 50 GFLOP/s');
  assert.deepEqual(r.xTicks.map((t) => [t.text, t.at]), [['1e-1', 20], ['1', 120], ['10', 220], ['100', 320]]);
  assert.deepEqual(r.yTicks.map((t) => t.text), ['1', '10', '100', '1000']);
});

test('roofline of the GPU: the steps are projections on the roof', () => {
  const r = roofline(response.gpu, response.steps, {measured: false});
  assert.deepEqual(r.xDomain, [0.1, 10000]);
  assert.deepEqual(r.yDomain, [100, 1000000]);
  assert.ok(r.dots.every((d) => d.projected));
  assert.equal(r.dots[1].label, 'step 1 (decode): 0.5 FLOP/byte, projection on this roof, not measured');
  // a projection sits on the roof: memory-bound at 0.5 FLOP/byte, below the flat part
  assert.ok(r.dots[1].y > r.ridge.y);
});

test('machine and GPU lines', () => {
  assert.equal(machineLine(response.machine), 'this machine (measured: a 1024x1024 fp32 matmul; a 256 MiB copy): '
    + 'peak 200 GFLOP/s, bandwidth 20 GB/s, ridge 10 FLOP/byte');
  assert.equal(gpuLine(response.gpu), 'NVIDIA H100 SXM (computed from the published spec, not measured): '
    + 'peak 989000 GFLOP/s, bandwidth 3350 GB/s, ridge 295.224 FLOP/byte');
});

test('the readout', () => {
  assert.deepEqual(readoutLines(response), [
    'prompt: 8 tokens; 3 steps: 1 prefill, 2 decode',
    'model: 134515008 parameters, float32, weights 538000000 bytes, 269030000 FLOP per token in the '
      + 'decoder layers\' linears',
    'this machine (measured: a 1024x1024 fp32 matmul; a 256 MiB copy): peak 200 GFLOP/s, bandwidth 20 GB/s, '
      + 'ridge 10 FLOP/byte',
    '  cpu: Test CPU',
    'NVIDIA H100 SXM (computed from the published spec, not measured): peak 989000 GFLOP/s, '
      + 'bandwidth 3350 GB/s, ridge 295.224 FLOP/byte',
    'prefill step 0: 8 tokens, context 8, 40 ms, intensity 4 FLOP/byte, 50 GFLOP/s, 10 GB/s '
      + '(memory-bound on this machine)',
    'prefill: 40 ms, intensity 4 FLOP/byte',
    'decode step 1: 1 tokens, context 9, 10 ms, intensity 0.5 FLOP/byte, 5 GFLOP/s, 10 GB/s '
      + '(memory-bound on this machine)',
    'decode: mean 15 ms per step, mean intensity 0.5 FLOP/byte (memory-bound on this machine, '
      + 'memory-bound on the NVIDIA H100 SXM)',
  ]);
  const one = {...response, steps: response.steps.slice(0, 1)};
  assert.equal(readoutLines(one).at(-1), 'decode: no decode step (one token asked for)');
  // after "measure again" the readout uses the new machine figures
  const again = {...response.machine, peak_gflops: 300, ridge: 15};
  assert.equal(readoutLines(response, again)[2], 'this machine (measured: a 1024x1024 fp32 matmul; '
    + 'a 256 MiB copy): peak 300 GFLOP/s, bandwidth 20 GB/s, ridge 15 FLOP/byte');
});

test('phase labels beside the first dot of each phase, projections said so', () => {
  const dots = [{phase: 'prefill', x: 10, y: 50, projected: true}, {phase: 'decode', x: 5, y: 80, projected: true},
                {phase: 'decode', x: 5, y: 80, projected: true}];
  assert.deepEqual(phaseLabels(dots), [
    {phase: 'prefill', x: 17, y: 44, text: 'prefill (projection)'},
    {phase: 'decode', x: 12, y: 94, text: 'decode (projection)'},
  ]);
  assert.deepEqual(phaseLabels([{phase: 'prefill', x: 0, y: 0, projected: false}]),
                   [{phase: 'prefill', x: 7, y: -6, text: 'prefill'}]);
});
