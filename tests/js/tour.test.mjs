import {test} from 'node:test';
import assert from 'node:assert/strict';
import {existsSync} from 'node:fs';
import {STOPS, computedLines, stopReadout} from '../../kvscope/scope/static/js/logic/tour.js';
import {allocated, arrived, emitted, engineStarted, event, finished, freed, scheduled, stepEnd}
  from './events.mjs';

const LESSONS = new URL('../../kvscope/scope/static/lessons/', import.meta.url);
const stop = (id) => STOPS.find((s) => s.id === id);
const chunk = (rid, start, n, phase = 'prefill', drafts = 0) => ({request_id: rid, start, num_tokens: n, phase,
                                                                  num_draft_tokens: drafts});

test('seven stops in the order of the seven ideas, each with two sentences and a lesson', () => {
  assert.deepEqual(STOPS.map((s) => s.id), ['paged', 'batching', 'prefix', 'speculative', 'chunked', 'tensor', 'disagg']);
  for (const s of STOPS) {
    assert.equal(s.says.length, 2, s.id);
    assert.ok(s.says.every((line) => line.endsWith('.')), s.id);
    assert.ok(existsSync(new URL(`${s.lesson}.html`, LESSONS)), `${s.lesson}.html exists`);
    assert.ok(s.runs.length >= 1);
  }
  // only the two that start worker processes or engines wait for the button
  assert.deepEqual(STOPS.filter((s) => s.heavy).map((s) => s.id), ['tensor', 'disagg']);
  assert.ok(STOPS.filter((s) => s.heavy).every((s) => s.wait));
  // the quick runs stay small
  for (const s of STOPS.filter((x) => !x.heavy)) {
    for (const run of s.runs) {
      assert.equal(run.path, 'lab/run');
      assert.ok(run.body.prompts.length <= 4 && (run.body.max_tokens ?? 0) <= 24, s.id);
    }
  }
  assert.equal(stop('tensor').runs[0].body.tensor_parallel_size, 2);
  assert.equal(stop('disagg').runs[0].path, 'lab/disaggregation');
  assert.deepEqual(stop('batching').runs.map((r) => r.body.batching), ['continuous', 'static']);
});

test('paged attention: the step where the pool held the most blocks', () => {
  const events = [
    engineStarted({block_size: 4, num_blocks: 8}),
    arrived(0, '0', [1, 2, 3, 4, 5]), allocated(0, '0', [0, 1]), scheduled(0, '0'), emitted(0, '0', 9),
    stepEnd(0, [chunk('0', 0, 5)]),
    arrived(1, '1', [1, 2, 3]), allocated(1, '1', [2]), scheduled(1, '1'), emitted(1, '0', 9), emitted(1, '1', 9),
    stepEnd(1, [chunk('0', 5, 1, 'decode'), chunk('1', 0, 3)]),
    freed(2, '0', [1, 0]), finished(2, '0', 2), stepEnd(2, [chunk('0', 6, 1, 'decode'), chunk('1', 3, 1, 'decode')]),
    freed(3, '1', [2]), finished(3, '1', 2), stepEnd(3, [chunk('1', 4, 1, 'decode')]),
  ];
  const r = stop('paged').analyse([{events}]);
  assert.equal(r.state.step, 1);
  assert.equal(r.heldBlocks, 3);
  assert.equal(r.lines[0], 'after step 1: 2 requests hold 3 blocks of one pool of 8, each through its own block table');
  assert.ok(r.lines.includes('request 1 (running, 3 tokens computed): [2]'));
  assert.ok(r.lines.includes('free blocks: 5 of 8'));
});

test('prefix caching: the second request\'s hit blocks and computed tokens', () => {
  const lookup = (step, rid, queried, hit, ids) => event('prefix_cache_lookup', step,
    {request_id: rid, queried_tokens: queried, hit_tokens: hit, block_ids: ids, hashes: ids.map((i) => `h${i}`)});
  const events = [
    engineStarted({block_size: 4, num_blocks: 8, enable_prefix_caching: true}),
    arrived(0, '0', [1, 2, 3, 4, 5, 6, 7, 8, 9]), allocated(0, '0', [0, 1, 2]), lookup(0, '0', 9, 0, []), scheduled(0, '0'),
    event('blocks_cached', 0, {request_id: '0', block_ids: [0, 1], hashes: ['h0', 'h1'], first_index: 0}),
    stepEnd(0, [chunk('0', 0, 9)]),
    arrived(2, '1', [1, 2, 3, 4, 5, 6, 7, 8, 20, 21]),
    event('blocks_shared', 2, {request_id: '1', block_ids: [0, 1]}), allocated(2, '1', [3]),
    lookup(2, '1', 10, 8, [0, 1]), scheduled(2, '1', 8), stepEnd(2, [chunk('1', 8, 2)]),
  ];
  const r = stop('prefix').analyse([{events}]);
  assert.deepEqual(r.lines, [
    'request 1: 8 of 10 prompt tokens found in the prefix cache (2 blocks: 0, 1)',
    'computed: 2 tokens; shared with request 0: 2 blocks of 4 tokens',
  ]);
  assert.deepEqual(r.chain.blocks.map((b) => b.hit), [true, true, false]);
});

test('speculative decoding: drafts proposed and accepted over the passes', () => {
  const verified = (step, drafts, accepted) => event('drafts_verified', step, {request_id: '0', method: 'ngram',
    draft_token_ids: drafts, num_accepted: accepted, token_ids: [...drafts.slice(0, accepted), 99]});
  const events = [
    engineStarted({block_size: 4, num_blocks: 8}),
    arrived(0, '0', [1, 2, 3]), allocated(0, '0', [0]), scheduled(0, '0'), emitted(0, '0', 5), stepEnd(0, [chunk('0', 0, 3)]),
    allocated(1, '0', [1]), verified(1, [6, 7, 8, 9], 4), stepEnd(1, [chunk('0', 3, 5, 'verify', 4)]),
    verified(2, [6, 7, 8, 9], 1), stepEnd(2, [chunk('0', 8, 5, 'verify', 4)]),
  ];
  const data = {events, outputs: [{token_ids: [5, 6, 7, 8, 9, 99, 6, 99], text: ''}], token_texts: {}};
  const r = stop('speculative').analyse([data]);
  assert.deepEqual(r.lines, ['2 verifying passes: 8 drafts proposed, 5 accepted',
                             '8 tokens generated in 3 steps (prefill included)']);
});

test('chunked prefill: the long prompt\'s chunks beside the decodes', () => {
  const long = String(stop('chunked').runs[0].body.prompts.length - 1);
  const events = [
    engineStarted({block_size: 4, num_blocks: 16, max_num_batched_tokens: 8}),
    arrived(0, '0', [1, 2]), stepEnd(0, [chunk('0', 0, 2)]),
    arrived(1, long, Array.from({length: 13}, (_, i) => i)),
    stepEnd(1, [chunk('0', 2, 1, 'decode'), chunk(long, 0, 7)]),
    stepEnd(2, [chunk('0', 3, 1, 'decode'), chunk(long, 7, 6)]),
  ];
  const r = stop('chunked').analyse([{events}]);
  assert.deepEqual(r.lines, [
    'long prompt: 13 tokens prefilled in 2 chunks (7 + 6) at steps 1, 2, budget 8 tokens a step',
    'steps where a chunk ran beside other requests\' decodes: 2 of 2',
  ]);
});

test('the heavy stops say what the engine computes before they run, labelled so', () => {
  const engine = engineStarted({num_layers: 30, num_heads: 9, num_kv_heads: 3, head_dim: 64, kv_bytes_per_token: 46080});
  assert.equal(computedLines(stop('tensor'), engine)[0], 'computed from the engine\'s description, not run: '
    + 'each of its 30 layers has 9 query heads and 3 KV heads to split over 2 ranks');
  assert.match(computedLines(stop('disagg'), engine)[0], /^computed from the engine's description, not run: each prompt token's K and V take 46,080 bytes/);
  assert.deepEqual(computedLines(stop('disagg'), null), ['the server did not describe its engine']);
  assert.deepEqual(stopReadout(5, ['x']), ['stop 6 of 7: Tensor parallelism', 'x']);
});

test('tensor parallelism and disaggregation read their runs through their lessons\' logic', () => {
  const rank = (r, q, kv, inter, vocab, w) => ({rank: r, q_heads: q, kv_heads: kv, intermediate: inter, vocab,
    weights: {qkv_proj: [w, 4], o_proj: [4, w], gate_up_proj: [w, 4], down_proj: [4, w]}, kv_pool_shape: [1]});
  const started = engineStarted({tensor_parallel_size: 2, ranks: [rank(0, [0, 2], [0, 1], [0, 8], [0, 10], 3),
                                                                   rank(1, [2, 4], [1, 2], [8, 16], [10, 20], 1)]});
  const t = stop('tensor').analyse([{events: [started, stepEnd(0, [], {num_collectives: 5})], outputs: []}]);
  assert.equal(t.lines[0], 'rank 0: query heads 0–1, KV head 0, 48 weights of each layer (75.0%)');
  assert.equal(t.lines[2], 'collectives in step 0: 5; 1 step run on 2 worker processes');
  const side = (events, stats) => ({events, stats});
  const stats = {num_computed_prompt_tokens: 3, num_computed_tokens: 3, num_steps: 1, num_free_blocks: 8, num_blocks: 8};
  const data = {prompt_token_ids: [1, 2, 3],
    prefill: side([engineStarted(), event('kv_transferred', 1, {request_id: 'r', direction: 'send', num_tokens: 3,
      num_bytes: 768, seconds: 0.001, ok: true, reason: ''})], stats),
    decode: side([engineStarted(), event('kv_transferred', 0, {request_id: 'r', direction: 'load', num_tokens: 3,
      num_bytes: 768, seconds: 0.002, ok: true, reason: ''})], {...stats, num_computed_prompt_tokens: 0, num_steps: 4})};
  const d = stop('disagg').analyse([data]);
  assert.equal(d.lines[0], 'K/V of 3 prompt tokens moved: 768 bytes (768 B), load 2.00 ms, send 1.00 ms');
  assert.match(d.lines[2], /^decode server: 0 of 3 prompt tokens computed/);
});
