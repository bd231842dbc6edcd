import {test} from 'node:test';
import assert from 'node:assert/strict';
import {UNCHUNKED_BUDGET, collapse, runBody, longId, stepMs, longestGap, runFigures, trackBars, sharedScale,
  chunkText, stallText, stepsText, differing, verdict, figureRows, readoutLines} from '../../kvscope/scope/static/js/logic/chunked-prefill.js';
import {arrived, emitted, engineStarted, stepEnd} from './events.mjs';

const prefill = (rid, start, n) => ({request_id: rid, start, num_tokens: n, phase: 'prefill'});
const decode = (rid, start) => ({request_id: rid, start, num_tokens: 1, phase: 'decode'});
const at = (e, time) => ({...e, time});
const LONG = [...Array(10).keys()];

// Two short requests (0: 2 prompt tokens, 1: 3) start at step 0; the 10-token prompt of
// request 2 arrives before step 1 and goes in whole: step 1 takes 80 ms, the others 10.
function unchunkedRun() {
  return [
    engineStarted({max_num_batched_tokens: 1024}),
    arrived(0, '0', [1, 2]),
    arrived(0, '1', [3, 4, 5]),
    at(emitted(0, '0', 7), 0.010),
    at(emitted(0, '1', 8), 0.010),
    stepEnd(0, [prefill('0', 0, 2), prefill('1', 0, 3)], {forward_ms: 9, schedule_ms: 0.5, sample_ms: 0.25, update_ms: 0.25}),
    arrived(1, '2', LONG),
    at(emitted(1, '0', 7), 0.091),
    at(emitted(1, '1', 8), 0.0915),
    at(emitted(1, '2', 9), 0.0915),
    stepEnd(1, [decode('0', 2), decode('1', 3), prefill('2', 0, 10)], {forward_ms: 80}),
    at(emitted(2, '0', 7), 0.101),
    at(emitted(2, '1', 8), 0.101),
    at(emitted(2, '2', 9), 0.500),  // the long request's own gaps do not count
    stepEnd(2, [decode('0', 3), decode('1', 4), decode('2', 10)], {forward_ms: 10}),
  ];
}

// The same workload at a budget of 6: the two decodes go first, the prompt gets 4, 4, 2.
function chunkedRun() {
  return [
    engineStarted({max_num_batched_tokens: 6}),
    arrived(0, '0', [1, 2]),
    arrived(0, '1', [3, 4, 5]),
    at(emitted(0, '0', 7), 0.010),
    at(emitted(0, '1', 8), 0.010),
    stepEnd(0, [prefill('0', 0, 2), prefill('1', 0, 3)], {forward_ms: 10}),
    arrived(1, '2', LONG),
    at(emitted(1, '0', 7), 0.040),
    at(emitted(1, '1', 8), 0.040),
    stepEnd(1, [decode('0', 2), decode('1', 3), prefill('2', 0, 4)], {forward_ms: 30}),
    at(emitted(2, '0', 7), 0.072),
    at(emitted(2, '1', 8), 0.072),
    stepEnd(2, [decode('0', 3), decode('1', 4), prefill('2', 4, 4)], {forward_ms: 32}),
    at(emitted(3, '0', 7), 0.095),
    at(emitted(3, '1', 8), 0.095),
    at(emitted(3, '2', 9), 0.095),
    stepEnd(3, [decode('0', 4), decode('1', 5), prefill('2', 8, 2)], {forward_ms: 23}),
    stepEnd(4, [decode('0', 5), decode('1', 6), decode('2', 10)], {forward_ms: 10}),
  ];
}

const W = {shorts: ['a', 'b'], long: 'a long prompt', maxTokens: 8, arriveAt: 1};

test('runBody: the short prompts from step 0, the long one last; only the budget differs', () => {
  const u = runBody(W, UNCHUNKED_BUDGET);
  const c = runBody(W, 32);
  assert.deepEqual(u, {prompts: ['a', 'b', 'a long prompt'], arrive_at_step: [0, 0, 1], max_tokens: 8,
                       max_num_batched_tokens: 1024, max_num_seqs: 8, block_size: 16, num_blocks: 64,
                       enable_prefix_caching: false});
  assert.deepEqual({...c, max_num_batched_tokens: 1024}, u);
  assert.equal(longId(u), '2');
  assert.equal(collapse('  one\n  two\tthree  \n'), 'one two three');
});

test('stepMs adds the four measured parts; longestGap skips the long request', () => {
  assert.equal(stepMs({schedule_ms: 0.5, forward_ms: 9, sample_ms: 0.25, update_ms: 0.25}), 10);
  const events = unchunkedRun();
  const gap = longestGap(events, '2');
  assert.equal(gap.rid, '1');
  assert.equal(gap.from, 0);
  assert.equal(gap.to, 1);
  assert.ok(Math.abs(gap.ms - 81.5) < 1e-9);
  // counting the long request too, its own 408.5 ms gap would win
  assert.equal(longestGap(events, null).rid, '2');
  assert.equal(longestGap([emitted(0, '0', 1)], '2'), null);
});

test('runFigures: the chunks, the prefill time and tokens, the stall', () => {
  const u = runFigures(unchunkedRun(), '2');
  assert.equal(u.budget, 1024);
  assert.deepEqual(u.chunks, [10]);
  assert.deepEqual(u.chunkSteps, [1]);
  assert.equal(u.prefillMs, 80);
  assert.equal(u.totalMs, 100);
  assert.equal(u.prefillTokens, 15);
  assert.equal(u.promptTokens, 10);
  assert.equal(u.arriveStep, 1);
  assert.equal(u.numShort, 2);
  assert.deepEqual(u.steps.map((s) => [s.step, s.ms, s.tokens, s.chunk, s.otherPrefill]),
    [[0, 10, 5, 0, true], [1, 80, 12, 10, false], [2, 10, 3, 0, false]]);
  const c = runFigures(chunkedRun(), '2');
  assert.deepEqual(c.chunks, [4, 4, 2]);
  assert.deepEqual(c.chunkSteps, [1, 2, 3]);
  assert.equal(c.prefillMs, 85);
  assert.equal(c.prefillTokens, u.prefillTokens);
  assert.equal(c.stall.to, 2);
  assert.ok(Math.abs(c.stall.ms - 32) < 1e-9);
});

test('trackBars: one scale for both tracks, kinds, the stall and the chunk sizes', () => {
  const u = runFigures(unchunkedRun(), '2');
  const c = runFigures(chunkedRun(), '2');
  const scale = sharedScale(u, c);
  assert.deepEqual(scale, {maxMs: 80, numSteps: 5});
  const t = trackBars(u, {...scale, width: 500, band: 80, top: 10});
  assert.equal(t.height, 106);
  assert.deepEqual(t.bars.map((b) => [b.kind, b.chunk, b.stall]),
    [['prefill', 0, false], ['long', 10, true], ['decode', 0, false]]);
  assert.deepEqual(t.bars.map((b) => [b.x, b.w, b.y, b.h]), [[10, 80, 80, 10], [110, 80, 10, 80], [210, 80, 80, 10]]);
  assert.equal(t.bars[1].label, 'step 1: 80.0 ms, 12 tokens, 10 of them from the long prompt');
  const tc = trackBars(c, {...scale, width: 500, band: 80, top: 10});
  assert.deepEqual(tc.bars.map((b) => b.kind), ['prefill', 'long', 'long', 'long', 'decode']);
  assert.deepEqual(tc.bars.filter((b) => b.stall).map((b) => b.step), [2]);
});

test('texts: chunks, stall, differing outputs', () => {
  assert.equal(chunkText([4, 4, 2]), '3 chunks (4, 4, 2 tokens)');
  assert.equal(chunkText([10]), '1 chunk (10 tokens)');
  assert.equal(stepsText([4]), 'step 4');
  assert.equal(stepsText([4, 5]), 'steps 4, 5');
  assert.equal(stallText({ms: 32, rid: '1', from: 1, to: 2}), '32.0 ms (request 1, between its tokens of steps 1 and 2)');
  assert.equal(stallText(null), 'no short request made two tokens');
  const out = (rid, ids) => ({request_id: rid, token_ids: ids});
  assert.deepEqual(differing([out('0', [1, 2]), out('1', [3])], [out('0', [1, 2]), out('1', [4])]), ['1']);
  assert.deepEqual(differing([out('0', [1])], [out('0', [1])]), []);
});

test('verdict: the stall cut, and the prefill time said as measured either way', () => {
  const u = runFigures(unchunkedRun(), '2');
  const c = runFigures(chunkedRun(), '2');
  assert.deepEqual(verdict(u, c), [
    'Chunking cut the longest wait between two tokens of a short request from 81.5 ms to 32.0 ms: 2.5× shorter.',
    'The long prompt\'s prefill took 80.0 ms unchunked and 85.0 ms chunked (3 steps): chunking did not shorten '
      + 'it; it took 6.3% longer.',
  ]);
  const faster = {...c, prefillMs: 60};
  assert.match(verdict(u, faster)[1], /: 25\.0% less here, though the same 10 prompt tokens went through the model/);
  const whole = {...u, budget: 256};
  assert.deepEqual(verdict(u, whole).slice(0, 2), [
    'At a budget of 256 the long prompt fit in one step: nothing was chunked.',
    'The longest wait between two tokens was not shorter with chunking here: 81.5 ms unchunked, 81.5 ms chunked.',
  ]);
});

test('figureRows and readoutLines', () => {
  const u = runFigures(unchunkedRun(), '2');
  const c = runFigures(chunkedRun(), '2');
  assert.deepEqual(figureRows(u, c)[3], ['long prompt: chunks', '1 chunk (10 tokens)', '3 chunks (4, 4, 2 tokens)']);
  assert.deepEqual(figureRows(u, c)[0], ['token budget per step', '1,024', '6']);
  assert.deepEqual(readoutLines(u, c, []), [
    'workload: 2 short requests from step 0, then a 10-token prompt (request 2) arriving before step 1',
    'unchunked, token budget 1,024: 3 steps, 100.0 ms in all',
    '  long prompt: 1 chunk (10 tokens) in step 1, prefilled in 80.0 ms',
    '  longest wait between two tokens of a short request: 81.5 ms (request 1, between its tokens of steps 0 and 1)',
    'chunked, token budget 6: 5 steps, 105.0 ms in all',
    '  long prompt: 3 chunks (4, 4, 2 tokens) in steps 1, 2, 3, prefilled in 85.0 ms',
    '  longest wait between two tokens of a short request: 32.0 ms (request 0, between its tokens of steps 1 and 2)',
    'prefill tokens: 15 unchunked, 15 chunked (equal)',
    ...verdict(u, c),
    'greedy tokens: the same in both runs for every request',
  ]);
  assert.equal(readoutLines(u, c, ['1']).at(-1), 'greedy tokens differ for request 1');
});
