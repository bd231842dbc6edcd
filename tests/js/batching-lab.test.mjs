import {test} from 'node:test';
import assert from 'node:assert/strict';
import {LIMITS, PRESETS, cellState, figures, formatRows, labBody, lanes, parseRows, percentile,
  promptOf, readoutLines, sameTokens, staticBatches, stepLine, summarize, tableRows}
  from '../../kvscope/scope/static/js/logic/batching-lab.js';
import {arrived, emitted, engineStarted, event, finished, scheduled, stepEnd} from './events.mjs';

// Times on a clock of its own: step n begins at n/10 s and ends 0.08 s later; what
// happens inside it is stamped n/10 + 0.05.
const inStep = (e) => ({...e, time: e.step / 10 + 0.05});
const begin = (step) => ({...event('step_begin', step), time: step / 10});
const end = (step, batch) => ({...stepEnd(step, batch), time: step / 10 + 0.08});
const prefill = (rid, n) => ({request_id: rid, start: 0, num_tokens: n, phase: 'prefill'});
const decode = (rid) => ({request_id: rid, start: 0, num_tokens: 1, phase: 'decode'});
const token = (step, rid) => inStep(emitted(step, rid, 7));
const done = (step, rid, n) => inStep(finished(step, rid, n));
const start = (step, rid) => inStep(scheduled(step, rid));

// Two seats; request 0 (3 prompt tokens, 1 output), 1 (5, 3) and 2 (2, 2), all there at
// the start. Static: [0, 1] run to step 2 (0 sits idle after step 0), then [2] alone.
function staticRun() {
  return [
    engineStarted({max_num_seqs: 2}),
    {...arrived(0, '0', [1, 2, 3]), time: 0},
    {...arrived(0, '1', [1, 2, 3, 4, 5]), time: 0},
    {...arrived(0, '2', [1, 2]), time: 0},
    begin(0), start(0, '0'), start(0, '1'), token(0, '0'), token(0, '1'), done(0, '0', 1),
    end(0, [prefill('0', 3), prefill('1', 5)]),
    begin(1), token(1, '1'), end(1, [decode('1')]),
    begin(2), token(2, '1'), done(2, '1', 3), end(2, [decode('1')]),
    begin(3), start(3, '2'), token(3, '2'), end(3, [prefill('2', 2)]),
    begin(4), token(4, '2'), done(4, '2', 2), end(4, [decode('2')]),
  ];
}

// The same workload with continuous batching: 2 takes request 0's seat at step 1.
function continuousRun() {
  return [
    ...staticRun().slice(0, 11),
    begin(1), start(1, '2'), token(1, '1'), token(1, '2'), end(1, [decode('1'), prefill('2', 2)]),
    begin(2), token(2, '1'), token(2, '2'), done(2, '1', 3), done(2, '2', 2),
    end(2, [decode('1'), decode('2')]),
  ];
}

const outputs = (ids) => Object.entries(ids).map(([rid, tokenIds]) => ({request_id: rid, token_ids: tokenIds}));
const data = (events, extra = {}) => ({events, outputs: [], ...extra});

test('the presets are within the limits and the editor reads back what it shows', () => {
  assert.deepEqual(Object.keys(PRESETS), ['balanced', 'prompt-heavy', 'long-tail', 'bursty']);
  for (const p of Object.values(PRESETS)) {
    assert.ok(p.rows.length <= LIMITS.requests[1]);
    assert.deepEqual(parseRows(formatRows(p.rows)), p.rows);
  }
  assert.ok(PRESETS.bursty.rows.some((r) => r.arrival > 0));
  assert.ok(PRESETS['prompt-heavy'].rows.every((r) => r.words >= 60 && r.output <= 8));
});

test('the editor takes three numbers a line and names the first line it cannot take', () => {
  assert.deepEqual(parseRows('12, 8, 0\n\n  30 4 2  \n'),
    [{words: 12, output: 8, arrival: 0}, {words: 30, output: 4, arrival: 2}]);
  assert.throws(() => parseRows(''), /1 to 8 requests, one per line; it has 0/);
  assert.throws(() => parseRows('1 1 0\n'.repeat(9)), /it has 9/);
  assert.throws(() => parseRows('12, 8\n'), /line 1 \("12, 8"\): write three whole numbers/);
  assert.throws(() => parseRows('12 8 0\n12 8.5 0'), /line 2/);
  assert.throws(() => parseRows('12 65 0'), /line 1: output tokens must be between 1 and 64; got 65/);
  assert.throws(() => parseRows('0 8 0'), /prompt words must be between 1 and 150/);
  assert.throws(() => parseRows('5 8 501'), /arrival step must be between 0 and 500/);
});

test('prompts are cut from the passage at their own starting word; the two runs differ only in batching', () => {
  assert.equal(promptOf(0, 3), 'Every morning the');
  assert.equal(promptOf(0, 3), promptOf(0, 3));
  assert.notEqual(promptOf(1, 3), promptOf(0, 3));
  assert.equal(promptOf(5, 400).split(' ').length, 400);  // wraps around the passage
  const rows = parseRows('4 6 0\n5 7 3');
  const s = labBody(rows, 2, 'static');
  const c = labBody(rows, 2, 'continuous');
  assert.deepEqual({...s, batching: null}, {...c, batching: null});
  assert.deepEqual([s.batching, s.max_num_seqs, s.max_tokens_each, s.arrive_at_step],
    ['static', 2, [6, 7], [0, 3]]);
  assert.equal(s.prompts[1], promptOf(1, 5));
  assert.equal(s.enable_prefix_caching, false);
});

test('the static batches are rebuilt from the events by the engine rule', () => {
  assert.deepEqual(staticBatches(staticRun(), 2), [['0', '1'], ['2']]);
  // a request arriving while a batch runs waits for the next one
  const late = staticRun();
  late.splice(3, 1);
  late.splice(late.findIndex((e) => e.kind === 'step_begin' && e.step === 1), 0,
    {...arrived(1, '2', [1, 2]), time: 0.1});
  assert.deepEqual(staticBatches(late, 2), [['0', '1'], ['2']]);
  assert.deepEqual(staticBatches(staticRun(), 3), [['0', '1', '2']]);
});

test('the lanes: prefill, decode, idle seats of a static batch, waiting, finished', () => {
  const events = staticRun();
  const summary = summarize(events);
  assert.equal(summary.seats, 2);
  const static_ = lanes(summary, staticBatches(events, 2));
  assert.deepEqual(static_.map((l) => l.cells.map((c) => c.state)), [
    ['prefill', 'idle', 'idle', 'finished', 'finished'],
    ['prefill', 'decode', 'decode', 'finished', 'finished'],
    ['waiting', 'waiting', 'waiting', 'prefill', 'decode'],
  ]);
  assert.deepEqual(static_[1].cells.map((c) => c.tokens), [5, 1, 1, 0, 0]);
  const cont = lanes(summarize(continuousRun()));
  assert.deepEqual(cont.map((l) => l.cells.map((c) => c.state)), [
    ['prefill', 'finished', 'finished'],
    ['prefill', 'decode', 'decode'],
    ['waiting', 'prefill', 'decode'],
  ]);
  // a request that has not arrived yet
  const r = {arrivedStep: 4, chunks: {}, finishedStep: null};
  assert.equal(cellState(r, 3), 'absent');
  assert.equal(cellState(r, 4), 'waiting');
});

test('percentiles interpolate between the sorted values', () => {
  assert.equal(percentile([3, 1, 2], 0.5), 2);
  assert.equal(percentile([1, 2, 3, 4], 0.5), 2.5);
  assert.ok(Math.abs(percentile([0, 10], 0.99) - 9.9) < 1e-12);
  assert.equal(percentile([5], 0.99), 5);
  assert.ok(Number.isNaN(percentile([], 0.5)));
});

test('the figures of each run, and the padding a padded static batch would compute', () => {
  const s = figures(data(staticRun(), {num_slot_steps: 10, num_idle_slot_steps: 4}), 'static');
  assert.equal(s.steps, 5);
  assert.ok(Math.abs(s.wall - 0.48) < 1e-9);  // step 0 begins at 0, step 4 ends at 0.48
  assert.equal(s.outputTokens, 6);
  assert.ok(Math.abs(s.tokPerS - 6 / 0.48) < 1e-9);
  // first tokens at 0.05, 0.05, 0.35; finishes at 0.05, 0.25, 0.45 (all arrived at 0)
  assert.ok(Math.abs(s.ttftMean - 0.15) < 1e-9);
  assert.ok(Math.abs(s.ttftP99 - (0.05 + 0.3 * 0.98)) < 1e-9);
  assert.ok(Math.abs(s.e2eMean - 0.25) < 1e-9);
  assert.equal(s.busy, 6);
  assert.equal(s.slotSteps, 10);
  assert.equal(s.utilisation, 0.6);
  // batch [0, 1]: prompt 0 padded 3 → 5, request 0 idles for 2 decode slots; [2]: nothing
  assert.deepEqual(s.padding, {prompt: 2, decode: 2, total: 4, computed: 2 * (5 + 3 - 1) + (2 + 2 - 1)});
  assert.equal(s.engineIdleSlotSteps, 4);
  const c = figures(data(continuousRun()), 'continuous');
  assert.equal(c.steps, 3);
  assert.equal(c.padding, null);
  assert.equal(c.batches, null);
  assert.equal(c.utilisation, 1);  // 6 busy of 2 seats × 3 steps
  assert.ok(c.ttftMean < s.ttftMean);
});

test('the readout says the figures in words and compares the tokens', () => {
  const s = figures(data(staticRun(), {num_slot_steps: 10, num_idle_slot_steps: 4}), 'static');
  const c = figures(data(continuousRun()), 'continuous');
  const same = sameTokens(outputs({0: [1], 1: [2, 3, 4], 2: [5, 6]}), outputs({0: [1], 1: [2, 3, 4], 2: [5, 9]}));
  assert.deepEqual(same.map((x) => x.same), [true, true, false]);
  const lines = readoutLines('custom', s, c, same);
  assert.equal(lines[0], 'workload: custom; 3 requests, 2 seats (max_num_seqs)');
  assert.equal(lines[1], 'static: 5 steps in 0.48 s, 6 output tokens, 12.5 tokens/s; time to first token '
    + 'mean 150.0 ms, p99 344.0 ms; end-to-end latency mean 250.0 ms, p99 446.0 ms; slot utilisation 60.0% '
    + '(6 busy of 10 slot-steps)');
  assert.match(lines[2], /^continuous: 3 steps in 0\.28 s, /);
  assert.match(lines[3], /^continuous against static: 0\.60× the steps, 0\.58× the wall time, /);
  assert.equal(lines[4], 'static batches: [0, 1] [2]; the engine counted 4 idle of 10 seat-steps while they ran');
  assert.equal(lines[5], 'padding a padded static batch would compute (computed, not run): 2 prompt tokens '
    + '(each prompt padded to the longest of its batch) + 2 decode slots of finished sequences = 4 tokens, '
    + '23.5% of the 17 it would compute');
  assert.equal(lines[6], 'same greedy tokens in both runs: 2 of 3 requests (different: 2)');
  const rows = tableRows(s, c);
  assert.deepEqual(rows[0], ['steps', '5', '3', '0.60×']);
  assert.equal(rows.length, 9);
  assert.deepEqual(rows[8].slice(1, 3), ['4 tokens: 2 prompt + 2 decode', 'none: no padded batch']);
});

test('a step in words, for each run', () => {
  const s = figures(data(staticRun()), 'static');
  const c = figures(data(continuousRun()), 'continuous');
  const ls = lanes(s.summary, s.batches);
  const lc = lanes(c.summary);
  assert.equal(stepLine(s, ls, 0), 'static, step 0: prefill 0 (3 tokens), 1 (5 tokens); waiting 2 (2 of 2 seats busy, 8 tokens)');
  assert.equal(stepLine(s, ls, 1), 'static, step 1: decode 1; idle slot 0; waiting 2 (1 of 2 seats busy, 1 token)');
  assert.equal(stepLine(c, lc, 1), 'continuous, step 1: prefill 2 (2 tokens); decode 1; finished 0 '
    + '(2 of 2 seats busy, 3 tokens)');
  assert.equal(stepLine(c, lc, 4), 'continuous: the run had ended after 3 steps');
});
