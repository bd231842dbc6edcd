import {test} from 'node:test';
import assert from 'node:assert/strict';
import {Timeline} from '../../kvscope/scope/static/js/timeline.js';
import {cachedHashes, openingStop, prefixChain, readoutLines, resultOf}
  from '../../kvscope/scope/static/js/logic/prefix-caching.js';
import {allocated, arrived, emitted, engineStarted, event, finished, freed, scheduled, stepEnd}
  from './events.mjs';

const A = 'a'.repeat(16);
const B = 'b'.repeat(16);
const C = 'c'.repeat(16);
const range = (from, to) => Array.from({length: to - from + 1}, (_, i) => from + i);
const lookup = (step, rid, queried, hit, blockIds, hashes) => event('prefix_cache_lookup', step,
  {request_id: rid, queried_tokens: queried, hit_tokens: hit, block_ids: blockIds, hashes});
const cached = (step, rid, blockIds, hashes, firstIndex) => event('blocks_cached', step,
  {request_id: rid, block_ids: blockIds, hashes, first_index: firstIndex});

// Request 0: 10 tokens in blocks 0-2, the two full ones cached. Request 1 arrives at step
// 2 with the same first 8 tokens and 5 of its own: two hits, one full block computed
// and cached (physical 3), one partial block (physical 4).
const EVENTS = [
  engineStarted({block_size: 4, num_blocks: 8, enable_prefix_caching: true}),
  arrived(0, '0', range(1, 10)),
  lookup(0, '0', 10, 0, [], []),
  allocated(0, '0', [0, 1, 2]),
  scheduled(0, '0'),
  cached(0, '0', [0, 1], [A, B], 0),
  emitted(0, '0', 50),
  stepEnd(0, [{request_id: '0', start: 0, num_tokens: 10, phase: 'prefill'}]),
  arrived(2, '1', [...range(1, 8), ...range(20, 24)]),
  lookup(2, '1', 13, 8, [0, 1], [A, B]),
  event('blocks_shared', 2, {request_id: '1', block_ids: [0, 1]}),
  allocated(2, '1', [3, 4]),
  scheduled(2, '1', 8),
  cached(2, '1', [3], [C], 2),
  stepEnd(2, [{request_id: '1', start: 8, num_tokens: 5, phase: 'prefill'}]),
  finished(3, '1', 1),
  freed(3, '1', [0, 1, 3, 4]),
  stepEnd(3),
];

test('cachedHashes maps logical block index to hash, physical block and step', () => {
  assert.deepEqual([...cachedHashes(EVENTS, '1')], [[2, {hash: C, block: 3, step: 2}]]);
  assert.deepEqual([...cachedHashes(EVENTS, '0').keys()], [0, 1]);
});

test('prefixChain lists request 1 block by block, with the table it held before freeing', () => {
  const chain = prefixChain(EVENTS);
  assert.equal(chain.bs, 4);
  assert.equal(chain.numTokens, 13);
  assert.equal(chain.lookup, EVENTS[9]);
  assert.deepEqual(chain.blocks, [
    {index: 0, tokens: [1, 2, 3, 4], full: true, hit: true, physical: 0, hash: A, hash0: A, cachedStep: null},
    {index: 1, tokens: [5, 6, 7, 8], full: true, hit: true, physical: 1, hash: B, hash0: B, cachedStep: null},
    {index: 2, tokens: [20, 21, 22, 23], full: true, hit: false, physical: 3, hash: C, hash0: null, cachedStep: 2},
    {index: 3, tokens: [24], full: false, hit: false, physical: 4, hash: null, hash0: null, cachedStep: null},
  ]);
});

test('resultOf says hit, cached miss, partial block, or plain miss', () => {
  const [hit, miss, partial] = [0, 2, 3].map((i) => resultOf(prefixChain(EVENTS).blocks[i]));
  assert.equal(hit, 'hit: shares physical block 0');
  assert.equal(miss, 'miss: computed into block 3, then cached');
  assert.equal(partial, 'partial (1 tokens): never hashed, computed into block 4');
  assert.equal(resultOf({hit: false, full: true, hash: null, physical: 6, tokens: [1, 2, 3, 4]}),
    'miss: computed into block 6');
});

test('the page opens right after the step that admitted request 1', () => {
  const timeline = new Timeline(EVENTS);
  assert.equal(openingStop(timeline), 15);
  assert.equal(openingStop(new Timeline(EVENTS.slice(0, 9))), 8);  // no lookup: the first stop
});

test('readoutLines at the opening stop', () => {
  const timeline = new Timeline(EVENTS);
  const state = timeline.seek(openingStop(timeline));
  assert.deepEqual(readoutLines(prefixChain(EVENTS), state, timeline), [
    'request 1 prompt: 13 tokens, 3 full blocks of 4',
    'lookup at admission (step 2): 8 of 13 tokens hit',
    'hit tokens: 8',
    'hit blocks: 0, 1',
    'chain:',
    '  block 0: aaaaaaaaaaaa hit: shares physical block 0',
    '  block 1: bbbbbbbbbbbb hit: shares physical block 1',
    '  block 2: cccccccccccc miss: computed into block 3, then cached',
    '  block 3: no hash partial (1 tokens): never hashed, computed into block 4',
    'step 2, event 15 of 18: 0 cached evictable, 5 held (2 shared), 3 free',
  ]);
});
