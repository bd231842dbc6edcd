import {test} from 'node:test';
import assert from 'node:assert/strict';
import {FOLLOWED, STAGES, coverage, followable, lifecycle, lifecycleBody, readoutLines, rowLine, totals}
  from '../../kvscope/scope/static/js/logic/request-lifecycle.js';
import {allocated, arrived, emitted, engineStarted, event, finished, freed, scheduled, stepEnd}
  from './events.mjs';

const range = (from, to) => Array.from({length: to - from + 1}, (_, i) => from + i);
const lookup = (step, rid, queried, hit, blockIds) => event('prefix_cache_lookup', step,
  {request_id: rid, queried_tokens: queried, hit_tokens: hit, block_ids: blockIds, hashes: blockIds.map(String)});
const shared = (step, rid, blockIds) => event('blocks_shared', step, {request_id: rid, block_ids: blockIds});
const cached = (step, rid, blockIds, first) => event('blocks_cached', step,
  {request_id: rid, block_ids: blockIds, hashes: blockIds.map(String), first_index: first});
const verified = (step, rid, drafts, accepted) => event('drafts_verified', step, {request_id: rid,
  method: 'ngram', draft_token_ids: drafts, num_accepted: accepted, token_ids: [...drafts.slice(0, accepted), 99]});
const preempted = (step, rid) => event('preempted', step, {request_id: rid, mode: 'recompute', fallback: false});
const chunk = (rid, start, n, phase = 'prefill', drafts = 0) => ({request_id: rid, start, num_tokens: n, phase,
                                                                  num_draft_tokens: drafts});

// A recorded shape of the page's workload, small: pool of 8 blocks of 4. Request 0 (8
// tokens) caches blocks 0 and 1; request 1 (12 tokens: the same 8, then 4 more) arrives
// at step 1, hits both, gets block 2, prefills its 4 tokens in two chunks of 2, verifies
// 2 drafts (1 accepted), is preempted at step 4, waits steps 4-5, comes back at step 6
// hitting 3 blocks, verifies once more (2 of 2), and finishes: every block is free again.
const EVENTS = [
  engineStarted({block_size: 4, num_blocks: 8, enable_prefix_caching: true}),
  arrived(0, '0', range(1, 8)),
  allocated(0, '0', [0, 1]),
  lookup(0, '0', 8, 0, []),
  scheduled(0, '0'),
  cached(0, '0', [0, 1], 0),
  emitted(0, '0', 50),
  stepEnd(0, [chunk('0', 0, 8)], {num_free_blocks: 6}),
  arrived(1, '1', range(1, 12)),
  shared(1, '1', [0, 1]),
  allocated(1, '1', [2]),
  lookup(1, '1', 12, 8, [0, 1]),
  scheduled(1, '1', 8),
  stepEnd(1, [chunk('0', 8, 1, 'decode'), chunk('1', 8, 2)], {num_free_blocks: 5}),
  stepEnd(2, [chunk('0', 9, 1, 'decode'), chunk('1', 10, 2)], {num_free_blocks: 5}),
  cached(3, '1', [2], 2),
  allocated(3, '1', [3]),
  verified(3, '1', [7, 8], 1),
  emitted(3, '1', 7),
  emitted(3, '1', 99),
  stepEnd(3, [chunk('0', 10, 1, 'decode'), chunk('1', 12, 3, 'verify', 2)], {num_free_blocks: 4}),
  freed(4, '1', [3, 2, 1, 0]),
  preempted(4, '1'),
  stepEnd(4, [chunk('0', 11, 1, 'decode')], {num_free_blocks: 5}),
  freed(5, '0', [1, 0]),
  finished(5, '0', 4),
  stepEnd(5, [chunk('0', 12, 1, 'decode')], {num_free_blocks: 8}),
  shared(6, '1', [0, 1, 2]),
  allocated(6, '1', [3]),
  lookup(6, '1', 14, 12, [0, 1, 2]),
  scheduled(6, '1', 12, true),
  verified(6, '1', [5, 6], 2),
  emitted(6, '1', 5),
  emitted(6, '1', 6),
  emitted(6, '1', 99),
  freed(6, '1', [3, 2, 1, 0]),
  finished(6, '1', 5),
  stepEnd(6, [chunk('1', 12, 4, 'verify', 2)], {num_free_blocks: 8}),
];

test('every stage of the followed request, in order, with the values of its events', () => {
  const life = lifecycle(EVENTS, '1');
  assert.deepEqual(life.rows.map((r) => r.stage), ['arrival', 'lookup', 'allocation', 'prefill', 'prefill',
    'verify', 'preemption', 'waiting', 'lookup', 'return', 'verify', 'finish', 'freed']);
  const [arrival, hit, alloc, p1, p2, v1, pre, wait, again, back, v2, fin, gone] = life.rows;
  assert.equal(arrival.promptTokens, 12);
  assert.deepEqual([hit.hitTokens, hit.queried, hit.hitBlocks, hit.again], [8, 12, [0, 1], false]);
  assert.deepEqual([alloc.newBlocks, alloc.table, alloc.computed], [[2], [0, 1, 2], 8]);
  assert.deepEqual([p1.tokens, p1.start, p2.tokens, p2.start], [2, 8, 2, 10]);
  assert.deepEqual([v1.drafts, v1.accepted, v1.emitted, v1.newBlocks, v1.table], [2, 1, 2, [3], [0, 1, 2, 3]]);
  assert.deepEqual([pre.step, pre.mode, pre.freedBlocks, pre.table], [4, 'recompute', [3, 2, 1, 0], []]);
  assert.deepEqual([wait.step, wait.to, wait.steps], [4, 5, 2]);
  assert.deepEqual([again.again, again.hitTokens, again.hitBlocks], [true, 12, [0, 1, 2]]);
  assert.deepEqual([back.resumed, back.newBlocks, back.computed], [true, [3], 12]);
  assert.deepEqual([v2.drafts, v2.accepted, v2.emitted], [2, 2, 3]);
  assert.deepEqual([fin.reason, fin.outputTokens, fin.step], ['length', 5, 6]);
  assert.deepEqual([gone.freedBlocks, gone.freeAfter, gone.poolSize], [[3, 2, 1, 0], 8, 8]);
  assert.match(gone.text, /the pool then had 8 of 8 blocks free/);
  assert.deepEqual(coverage(life.rows).missing, []);
  assert.deepEqual(coverage(life.rows).met, STAGES);
});

test('the strip and the block tables step by step', () => {
  const life = lifecycle(EVENTS, '1');
  assert.deepEqual(life.strip.map((s) => s.what),
    ['absent', 'prefill', 'prefill', 'verify', 'preempted', 'preempted', 'verify']);
  assert.deepEqual(life.strip.map((s) => s.accepted), [0, 0, 0, 1, 0, 0, 2]);
  assert.deepEqual(life.tables.map((t) => t.table), [[], [0, 1, 2], [0, 1, 2], [0, 1, 2, 3], [], [], []]);
  assert.deepEqual(life.tables.map((t) => t.hits), [0, 2, 2, 2, 0, 0, 0]);
  assert.equal(life.numSteps, 7);
});

test('totals and the readout', () => {
  const life = lifecycle(EVENTS, '1');
  assert.deepEqual(totals(life.rows), {prefillChunks: [2, 2], decodes: 0, verifies: 2, drafts: 4, accepted: 3,
                                       preemptions: 1, stepsRun: 4});
  const lines = readoutLines(life);
  assert.equal(lines[0], 'request 1 (lab run, 7 engine steps, pool of 8 blocks of 4 tokens)');
  assert.equal(lines[2], 'prefix-cache lookup, step 1, t = 0.010 s: 8 of 12 tokens found in the prefix cache, '
    + 'shared blocks 0, 1');
  assert.equal(lines.at(-2), 'prefill chunks: 2 (2 + 2 tokens); decode steps: 0 plain, 2 with drafts; '
    + 'drafts: 4 proposed, 3 accepted; preemptions: 1');
  assert.match(lines.at(-1), /^stages met: arrival, prefix-cache lookup, block allocation, prefill chunk, /);
  assert.equal(rowLine(life.rows[6]).split(':')[0], 'preemption, step 4, t = 0.040 s');
});

test('a request with plain decodes and no cache says which stages it did not meet', () => {
  const life = lifecycle(EVENTS, '0');
  assert.deepEqual(life.rows.map((r) => r.stage),
    ['arrival', 'lookup', 'allocation', 'prefill', 'decode', 'decode', 'decode', 'decode', 'decode', 'finish', 'freed']);
  assert.equal(life.rows[4].text, 'decode: 0 tokens out beside 1 other request');
  const {missing} = coverage(life.rows);
  assert.deepEqual(missing, ['verify', 'preemption', 'return']);
  assert.match(readoutLines(life).at(-1), /not met in this run: decode with drafts, preemption, return$/);
});

test('live: a stream joined by a snapshot lists only the requests it saw arrive, newest first', () => {
  const snapshot = event('snapshot', 3, {engine: engineStarted({num_blocks: 8}), blocks: Array.from({length: 8}, () => [0, null]),
    tables: {}, swapped: {}, requests: [{request_id: 'old', status: 'running', prompt_token_ids: [1], output_token_ids: [],
      priority: 0, num_computed_tokens: 1}], counters: {prefix_cache_queries: 0, prefix_cache_hits: 0,
      num_preemptions: 0, num_evictions: 0}});
  const stream = [snapshot, arrived(3, 'a', [1, 2]), arrived(3, 'b', [3]), allocated(3, 'a', [0]),
    scheduled(3, 'a'), stepEnd(3, [chunk('a', 0, 2)], {num_free_blocks: 7})];
  assert.deepEqual(followable(stream), [{rid: 'b', status: 'waiting'}, {rid: 'a', status: 'running'}]);
  const life = lifecycle(stream, 'a');
  assert.deepEqual(life.rows.map((r) => r.stage), ['arrival', 'allocation', 'prefill']);
});

test('the lab workload: request 1 shares request 0\'s opening, and the run is small', () => {
  const body = lifecycleBody();
  assert.equal(FOLLOWED, '1');
  assert.equal(body.prompts.length, 2);
  const opening = body.prompts[0].slice(0, body.prompts[0].indexOf('Say'));
  assert.ok(body.prompts[1].startsWith(opening) && opening.length > 40);
  assert.deepEqual(body.arrive_at_step, [0, 2]);
  assert.equal(body.speculative_config.method, 'ngram');
  assert.ok(body.enable_prefix_caching && body.max_num_batched_tokens <= 16 && body.num_blocks <= 18);
});
