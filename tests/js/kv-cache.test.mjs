import {test} from 'node:test';
import assert from 'node:assert/strict';
import {Timeline} from '../../kvscope/scope/static/js/timeline.js';
import {formulaText, growthLabel, readoutLines, requestCache}
  from '../../kvscope/scope/static/js/logic/kv-cache.js';
import {allocated, arrived, emitted, engineStarted, finished, freed, scheduled, stepEnd}
  from './events.mjs';

const SIZES = {loaded: {name: 'tiny', num_layers: 2, num_kv_heads: 2, head_dim: 8, dtype_bytes: 4,
                        dtype: 'float32', kv_bytes_per_token: 256}};
const slots = (allocatedSlots, held) => ({fragmentation: {allocated_slots: allocatedSlots, tokens_held: held}});

// One request: 6 prompt tokens (max_tokens 8) in two blocks of 4, two decode steps'
// worth of tokens, then finished and its blocks returned.
const EVENTS = [
  engineStarted({block_size: 4, kv_bytes_per_token: 256}),
  arrived(0, '0', [1, 2, 3, 4, 5, 6], {max_tokens: 8}),
  allocated(0, '0', [0, 1]),
  scheduled(0, '0'),
  emitted(0, '0', 10),
  stepEnd(0, [{request_id: '0', start: 0, num_tokens: 6, phase: 'prefill'}], slots(8, 6)),
  emitted(1, '0', 11),
  stepEnd(1, [{request_id: '0', start: 6, num_tokens: 1, phase: 'decode'}], slots(8, 7)),  // stop 8
  finished(2, '0', 2),
  freed(2, '0', [0, 1]),
  stepEnd(2, [], slots(0, 0)),  // stop 11
];

test('formulaText: bytes per token from the model\'s shape', () => {
  assert.equal(formulaText(SIZES.loaded), '2 × 2 layers × 2 KV heads × 8 head dim × 4 bytes (float32) = 256 bytes per token');
});

test('requestCache: tokens kept, blocks holding them, the most it can reach', () => {
  const timeline = new Timeline(EVENTS);
  assert.deepEqual(requestCache(timeline.seek(8), '0'), {inCache: 7, blocks: 2, total: 14});
  assert.deepEqual(requestCache(timeline.seek(11), '0'), {inCache: 0, blocks: 0, total: 14});
});

test('growthLabel: the bytes held after the latest step', () => {
  const timeline = new Timeline(EVENTS);
  assert.equal(growthLabel(timeline.seek(4)), 'No step has run yet.');
  assert.equal(growthLabel(timeline.seek(8)), 'After step 1: 1,792 bytes of keys and values held for '
    + '7 tokens, in blocks totalling 2,048 bytes.');
});

test('readoutLines while decoding and once finished', () => {
  const timeline = new Timeline(EVENTS);
  assert.deepEqual(readoutLines(SIZES, timeline.seek(8), timeline), [
    'KV bytes per token: 2 × 2 × 2 × 8 × 4 = 256',
    'step 1, event 8 of 11',
    'request 0 (running): 7 tokens in cache × 256 B = 1792 B (prompt 6 tokens, 2 generated)',
    '  blocks held: 2 × 4 slots × 256 B = 2048 B',
  ]);
  assert.deepEqual(readoutLines(null, timeline.seek(11), timeline), [
    'step 2, event 11 of 11',
    'request 0 (finished, blocks returned to the pool): 0 tokens in cache × 256 B = 0 B (prompt 6 tokens, 2 generated)',
    '  blocks held: 0 × 4 slots × 256 B = 0 B',
  ]);
});
