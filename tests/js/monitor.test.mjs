import {test} from 'node:test';
import assert from 'node:assert/strict';
import {Timeline} from '../../kvscope/scope/static/js/timeline.js';
import {monitorStats, readoutLines, READOUT_REQUESTS} from '../../kvscope/scope/static/js/logic/monitor.js';
import {allocated, arrived, emitted, engineStarted, event, finished, freed, scheduled, stepEnd}
  from './events.mjs';

// Request 0 finishes after one token; request 1 hits 4 of 8 prompt tokens in the prefix
// cache and is still running; request 2 waits.
const EVENTS = [
  engineStarted({block_size: 4, num_blocks: 6, enable_prefix_caching: true}),
  arrived(0, '0', [1, 2, 3, 4]),
  allocated(0, '0', [0]),
  scheduled(0, '0'),
  event('blocks_cached', 0, {request_id: '0', block_ids: [0], hashes: ['h0'], first_index: 0}),
  emitted(0, '0', 9),
  finished(0, '0', 1),
  freed(0, '0', [0]),
  stepEnd(0, [{request_id: '0', start: 0, num_tokens: 4, phase: 'prefill'}]),
  arrived(1, '1', [1, 2, 3, 4, 5, 6, 7, 8]),
  event('prefix_cache_lookup', 1, {request_id: '1', queried_tokens: 8, hit_tokens: 4, block_ids: [0], hashes: ['h0']}),
  event('blocks_shared', 1, {request_id: '1', block_ids: [0]}),
  allocated(1, '1', [1]),
  scheduled(1, '1', 4),
  emitted(1, '1', 10),
  emitted(1, '1', 11),
  arrived(1, '2', [1, 2]),
];

test('monitorStats: the headline counts', () => {
  const timeline = new Timeline(EVENTS);
  assert.deepEqual(monitorStats(timeline.seek(EVENTS.length)), [
    ['step', '1'], ['waiting', '1'], ['running', '1'], ['preempted / swapped', '0 / 0'],
    ['finished', '1'], ['blocks held', '2 of 6'], ['prefix-cache hit rate', '50.0%'], ['preemptions', '0'],
  ]);
});

test('readoutLines: pool, prefix cache and the latest requests', () => {
  const timeline = new Timeline(EVENTS);
  assert.deepEqual(readoutLines(timeline.seek(EVENTS.length), timeline), [
    'step 1, event 17 of 17',
    'pool: 6 blocks: 2 held by one request, 0 shared, 0 cached, 4 free',
    'prefix cache: 4 of 8 tokens hit (50.0%)',
    'preemptions: 0; tokens generated (requests shown): 3',
    'requests (latest 30):',
    '0: finished (length), prompt 4 tokens, 1 generated',
    '1: running, prompt 8 tokens, 2 generated',
    '2: waiting, prompt 2 tokens, 0 generated',
  ]);
});

test('readoutLines lists only the latest requests', () => {
  const many = [engineStarted(), ...Array.from({length: READOUT_REQUESTS + 5}, (_, i) => arrived(0, String(i), [1]))];
  const timeline = new Timeline(many);
  const lines = readoutLines(timeline.seek(many.length), timeline);
  assert.equal(lines.length, 5 + READOUT_REQUESTS);
  assert.equal(lines[5], '5: waiting, prompt 1 tokens, 0 generated');
});
