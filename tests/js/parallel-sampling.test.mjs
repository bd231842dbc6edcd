import {test} from 'node:test';
import assert from 'node:assert/strict';
import {Timeline} from '../../kvscope/scope/static/js/timeline.js';
import {copiedAt, copiesSoFar, memoryBars, memoryLine, memoryNote, peakOf, poolBlocks, promptLine,
  readoutLines, samplingRun} from '../../kvscope/scope/static/js/logic/parallel-sampling.js';
import {allocated, arrived, emitted, engineStarted, event, finished, freed, scheduled, stepEnd}
  from './events.mjs';

const decode = (rid) => ({request_id: rid, start: 6, num_tokens: 1, phase: 'decode'});

// Two completions of a 6-token prompt in blocks of 4: sequence 0#1 is forked onto the
// prompt's blocks 0 and 1; at step 1 both write into the half-full block 1, so 0#1
// copies it to block 2.
const EVENTS = [
  engineStarted({block_size: 4, num_blocks: 8, kv_bytes_per_token: 256}),
  arrived(0, '0', [1, 2, 3, 4, 5, 6], {max_tokens: 2}),
  allocated(0, '0', [0, 1]),
  scheduled(0, '0'),
  event('sequence_forked', 0, {request_id: '0#1', parent_id: '0', block_ids: [0, 1], num_computed_tokens: 6}),
  emitted(0, '0', 10, 'A'),
  emitted(0, '0#1', 11, 'B'),
  stepEnd(0, [{request_id: '0', start: 0, num_tokens: 6, phase: 'prefill'}]),
  event('copy_on_write', 1, {request_id: '0#1', src_block_id: 1, dst_block_id: 2}),  // 8
  emitted(1, '0', 12, 'C'),
  emitted(1, '0#1', 13, 'D'),
  stepEnd(1, [decode('0'), decode('0#1')]),  // stop 12
  finished(2, '0', 2),
  freed(2, '0', [0, 1]),
  finished(2, '0#1', 2),
  freed(2, '0#1', [0, 2]),
  stepEnd(2),  // stop 17
];
const COMPLETIONS = [{text: 'AC', token_ids: [10, 12], finish_reason: 'length'},
                     {text: 'BD', token_ids: [11, 13], finish_reason: 'length'}];
const RUN = samplingRun({events: EVENTS, outputs: [{completions: COMPLETIONS}]});

test('peakOf: the most blocks held, after the copy, against the tables without sharing', () => {
  assert.deepEqual(peakOf(EVENTS), {held: 3, referenced: 4, step: 1, sequences: 2});
});

test('samplingRun measures the prompt in blocks and bytes', () => {
  const {peak, completions, ...sizes} = RUN;
  assert.deepEqual(sizes, {bs: 4, promptLen: 6, bytesPerToken: 256, blockBytes: 1024,
                           promptBlocks: 2, fullBlocks: 1});
  assert.equal(completions, COMPLETIONS);
});

test('promptLine says whether the last prompt block is full', () => {
  assert.equal(promptLine(RUN), 'prompt: 6 tokens in 2 blocks of 4 (1 full, the last holds 2)');
  assert.equal(promptLine({...RUN, promptLen: 8, fullBlocks: 2}),
    'prompt: 8 tokens in 2 blocks of 4 (all full: nothing to copy)');
});

test('memory: the peak with sharing against separate requests', () => {
  assert.equal(memoryLine(RUN), 'memory at the peak, computed from this run\'s sizes: 3 blocks held '
    + 'with sharing (step 1); as 2 separate requests: 2 × 2 prompt blocks + 0 blocks of their own = 4');
  assert.deepEqual(memoryBars(RUN), [
    {label: 'with sharing, this run at its peak (step 1)', blocks: 3, kind: 'held'},
    {label: '2 separate requests: 2 × 2 prompt blocks + 0 of their own', blocks: 4, kind: ''},
  ]);
  assert.equal(memoryNote(RUN), 'The first bar is what the engine held, from its events. The second '
    + 'is computed from this run\'s sizes, not measured: the same block tables with nothing shared '
    + '(prompt 6 tokens; a block is 4 tokens × 256 bytes per token = 1.00 KiB). '
    + 'Sharing saved 1 block (1.00 KiB).');
});

test('copiesSoFar and copiedAt: the copy-on-write events, and the blocks copied at a step', () => {
  const timeline = new Timeline(EVENTS);
  timeline.seek(8);
  assert.deepEqual(copiesSoFar(timeline), []);
  timeline.seek(12);
  const copies = copiesSoFar(timeline);
  assert.deepEqual(copies, [EVENTS[8]]);
  assert.deepEqual([...copiedAt(copies, 1)], [2]);
  assert.deepEqual([...copiedAt(copies, 2)], []);
});

test('readoutLines after the copy', () => {
  const timeline = new Timeline(EVENTS);
  assert.deepEqual(readoutLines(RUN, timeline.seek(12), timeline), [
    'step 1, event 12 of 17',
    'prompt: 6 tokens in 2 blocks of 4 (1 full, the last holds 2)',
    'sequence 0 (running, 7 tokens computed, 2 generated): [0, 1]',
    'sequence 0#1 (running, 7 tokens computed, 2 generated): [0, 2]',
    'shared blocks: 0 (refcount 2)',
    'copy-on-write copies so far: 1',
    'free blocks: 5 of 8',
    'blocks held: 3; the same tables without sharing: 4',
    memoryLine(RUN),
  ]);
});

test('readoutLines at the end lists the completions', () => {
  const timeline = new Timeline(EVENTS);
  const lines = readoutLines(RUN, timeline.seek(17), timeline);
  assert.deepEqual(lines.slice(4, 8), [
    'shared blocks: none',
    'copy-on-write copies so far: 1',
    'free blocks: 8 of 8',
    'blocks held: 0; the same tables without sharing: 0',
  ]);
  assert.deepEqual(lines.slice(-3), ['completions:', '  0: "AC"', '  1: "BD"']);
});

test('poolBlocks: the prompt and each sequence\'s own blocks, within 8 to 512', () => {
  assert.equal(poolBlocks(6, 4, 4, 2), 2 + 2 * 2 + 4);
  assert.equal(poolBlocks(1, 16, 1, 1), 8);
  assert.equal(poolBlocks(NaN, 4, 4, 2), 64);
});
