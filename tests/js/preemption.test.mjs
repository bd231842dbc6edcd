import {test} from 'node:test';
import assert from 'node:assert/strict';
import {Timeline} from '../../kvscope/scope/static/js/timeline.js';
import {backText, latestVictim, openingStop, outText, preemptionLog, readoutLines, victimBlocks}
  from '../../kvscope/scope/static/js/logic/preemption.js';
import {allocated, arrived, emitted, engineStarted, event, finished, freed, scheduled, stepEnd}
  from './events.mjs';

const preempted = (step, rid, mode) => event('preempted', step, {request_id: rid, mode});
const decode = (rid, start) => ({request_id: rid, start, num_tokens: 1, phase: 'decode'});

// A pool of 4 blocks of 2 tokens, two prompts of 3 tokens. At step 1 request 0 needs a
// third block: request 1 gives its blocks back (recompute) and is admitted again at
// step 2, once request 0 has finished.
function recomputeRun() {
  return [
    engineStarted({block_size: 2, num_blocks: 4, preemption_mode: 'recompute'}),
    arrived(0, '0', [1, 2, 3]),
    arrived(0, '1', [4, 5, 6]),
    allocated(0, '0', [0, 1]),
    scheduled(0, '0'),
    allocated(0, '1', [2, 3]),
    scheduled(0, '1'),
    emitted(0, '0', 7),
    emitted(0, '1', 8),
    stepEnd(0, [{request_id: '0', start: 0, num_tokens: 3, phase: 'prefill'},
                {request_id: '1', start: 0, num_tokens: 3, phase: 'prefill'}]),
    freed(1, '1', [2, 3]),            // 10
    preempted(1, '1', 'recompute'),   // 11
    allocated(1, '0', [2]),
    emitted(1, '0', 9),
    stepEnd(1, [decode('0', 3)]),     // stop 15
    finished(2, '0', 2),
    freed(2, '0', [0, 1, 2]),
    scheduled(2, '1', 0, true),       // 17
    allocated(2, '1', [0, 1]),
    stepEnd(2, [{request_id: '1', start: 0, num_tokens: 4, phase: 'prefill'}]),  // stop 20
  ];
}

// The same squeeze with swapping: request 1's blocks go to swap slots 0 and 1 (the
// engine frees the blocks, then reports the copies and the preemption).
function swapRun() {
  const events = recomputeRun().slice(0, 10);
  events[0] = engineStarted({block_size: 2, num_blocks: 4, num_swap_slots: 4, preemption_mode: 'swap'});
  return [...events,
    freed(1, '1', [2, 3]),
    event('swapped_out', 1, {request_id: '1', copies: [[2, 0], [3, 1]]}),
    preempted(1, '1', 'swap'),
    allocated(1, '0', [2]),
    stepEnd(1, [decode('0', 3)]),
  ];
}

test('latestVictim: what left with the victim, and not back yet', () => {
  const events = recomputeRun();
  assert.equal(latestVictim(events, 11), null);  // the preemption itself is event 11
  assert.deepEqual(latestVictim(events, 15),
    {rid: '1', mode: 'recompute', step: 1, out: events[10], back: null});
  assert.equal(latestVictim(events, 20).back, events[17]);
});

test('latestVictim of a swap: the swap-out, not the freeing before it', () => {
  const events = swapRun();
  assert.equal(latestVictim(events, events.length).out, events[11]);
});

test('victimBlocks: the blocks given up, then those held again', () => {
  const timeline = new Timeline(recomputeRun());
  const at = (pos) => [...victimBlocks(latestVictim(timeline.events, pos), timeline.seek(pos))];
  assert.deepEqual(at(10), []);
  assert.deepEqual(at(15), [2, 3]);
  assert.deepEqual(at(20), [0, 1]);
  const swap = swapRun();
  assert.deepEqual([...victimBlocks(latestVictim(swap, swap.length), {tables: {}})], [2, 3]);
});

test('preemptionLog keeps preemptions and swaps, and a recompute victim\'s freeing', () => {
  const events = recomputeRun();
  assert.deepEqual(preemptionLog(events), [events[10], events[11]]);  // not request 0's freeing
  const swap = swapRun();
  assert.deepEqual(preemptionLog(swap), [swap[11], swap[12]]);  // the freeing before a swap is not logged
});

test('outText and backText, for both modes', () => {
  assert.equal(outText({out: null}), 'held no blocks');
  assert.equal(outText({out: {kind: 'blocks_freed', block_ids: [2, 3]}}), 'blocks freed, K/V dropped: 2, 3');
  assert.equal(outText({out: {kind: 'swapped_out', copies: [[2, 0], [3, 1]]}}),
    'blocks copied to swap: 2→slot 0, 3→slot 1');
  assert.equal(backText({back: null}), 'not yet');
  assert.equal(backText({back: {kind: 'swapped_in', step: 4, copies: [[0, 1], [1, 3]]}}),
    'step 4, copied back: slot 0→1, slot 1→3');
  assert.equal(backText({back: {kind: 'request_scheduled', step: 2, num_computed_tokens: 0}}),
    'step 2, admitted again with 0 tokens computed: recomputes its prompt and generated tokens');
});

test('the page opens after the step of the first preemption, else at the first step', () => {
  assert.equal(openingStop(new Timeline(recomputeRun())), 15);
  assert.equal(openingStop(new Timeline(recomputeRun().slice(0, 10))), 10);
});

test('readoutLines before any preemption, while preempted and once back', () => {
  const timeline = new Timeline(recomputeRun());
  const at = (pos) => readoutLines(timeline.seek(pos), timeline);
  assert.deepEqual(at(10), [
    'mode: recompute',
    'step 0, event 10 of 20',
    'statuses: 0 running, 1 running',
    'preemptions: 0 (swap outs 0, swap ins 0)',
    'victim: none yet',
    'free blocks: 0 of 4; swapped out: none',
  ]);
  assert.deepEqual(at(15), [
    'mode: recompute',
    'step 1, event 15 of 20',
    'statuses: 0 running, 1 preempted',
    'preemptions: 1 (swap outs 0, swap ins 0)',
    'victim: request 1 (recompute, step 1)',
    '  out: blocks freed, K/V dropped: 2, 3',
    '  back: not yet',
    'free blocks: 1 of 4; swapped out: none',
  ]);
  assert.deepEqual(at(20).slice(2), [
    'statuses: 0 finished, 1 running',
    'preemptions: 1 (swap outs 0, swap ins 0)',
    'victim: request 1 (recompute, step 1)',
    '  out: blocks freed, K/V dropped: 2, 3',
    '  back: step 2, admitted again with 0 tokens computed: recomputes its prompt and generated tokens',
    'free blocks: 2 of 4; swapped out: none',
  ]);
});

test('readoutLines names the swapped-out requests', () => {
  const timeline = new Timeline(swapRun());
  const lines = readoutLines(timeline.seek(timeline.length), timeline);
  assert.deepEqual(lines.slice(2), [
    'statuses: 0 running, 1 swapped',
    'preemptions: 1 (swap outs 1, swap ins 0)',
    'victim: request 1 (swap, step 1)',
    '  out: blocks copied to swap: 2→slot 0, 3→slot 1',
    '  back: not yet',
    'free blocks: 1 of 4; swapped out: 1',
  ]);
});
