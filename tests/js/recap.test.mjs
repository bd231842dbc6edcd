import {test} from 'node:test';
import assert from 'node:assert/strict';
import {ROWS, READING, measured, fragmentationFigure, speculativeFigure, preemptionFigure,
  chunkedFigure, speculativeBody, CHUNK_BUDGET} from '../../kvscope/scope/static/js/logic/recap.js';
import {UNCHUNKED_BUDGET} from '../../kvscope/scope/static/js/logic/chunked-prefill.js';
import {engineStarted, event, arrived, freed, emitted, finished} from './events.mjs';

test('every row says what it buys and links to lessons; measured rows build lab bodies', () => {
  const ids = ROWS.map((r) => r.id);
  assert.equal(new Set(ids).size, ids.length);
  for (const row of ROWS) {
    assert.ok(row.buys.length > 20, row.id);
    assert.ok(row.lessons.length >= 1, row.id);
    if (!measured(row)) continue;
    const bodies = row.chat ? row.bodies('a prompt') : row.bodies();
    assert.ok(bodies.length >= 1, row.id);
    for (const body of bodies) {
      assert.ok(body.prompts.length >= 1 && body.prompts.length <= 8, row.id);
      assert.equal(body.tensor_parallel_size, undefined, 'no worker processes from the recap');
    }
  }
  // the rows the brief names are measured; those needing workers only link
  for (const id of ['paged-attention', 'continuous-batching', 'chunked-prefill', 'prefix-caching',
                    'speculative-decoding', 'preemption']) {
    assert.ok(measured(ROWS.find((r) => r.id === id)), id);
  }
  for (const id of ['tensor-parallelism', 'pipeline-parallelism', 'disaggregation']) {
    assert.ok(!measured(ROWS.find((r) => r.id === id)), id);
  }
  assert.ok(READING.some(([work]) => work.includes('Efficient Memory Management for Large Language Model Serving with PagedAttention')));
});

test('the chunked row runs the lesson twice: unchunked, then chunked', () => {
  const [u, c] = ROWS.find((r) => r.id === 'chunked-prefill').bodies();
  assert.equal(u.max_num_batched_tokens, UNCHUNKED_BUDGET);
  assert.equal(c.max_num_batched_tokens, CHUNK_BUDGET);
  assert.deepEqual({...u, max_num_batched_tokens: 0}, {...c, max_num_batched_tokens: 0});
  const ev = (gap) => ({events: [
    engineStarted({max_num_batched_tokens: 32}),
    arrived(0, '0', [1, 2]), arrived(0, '3', [1, 2, 3]),
    {...emitted(1, '0', 5), time: 0.1}, {...emitted(2, '0', 6), time: 0.1 + gap},
  ]});
  const fig = chunkedFigure([ev(0.5), ev(0.05)], [u, c]);
  assert.equal(Math.round(fig.value.unchunked), 500);
  assert.equal(Math.round(fig.value.chunked), 50);
  assert.match(fig.text, /50\.0 ms chunked \(budget 32\), 500\.0 ms unchunked/);
});

test('fragmentation: unused shares summed over the steps', () => {
  const step = (a, f, r, held) => event('step_end', 1, {fragmentation: {
    allocated_slots: a, filled_slots: f, reserved_max_model_len: r, reserved_own_length: r, tokens_held: held}});
  const fig = fragmentationFigure([{events: [engineStarted(), step(16, 12, 100, 12), step(16, 14, 100, 14)]}]);
  assert.equal(fig.value.paged, 1 - 26 / 32);
  assert.equal(fig.value.contiguous, 1 - 26 / 200);
  assert.match(fig.text, /^18\.8% of paged slots unused, against 87\.0%/);
});

test('speculative decoding: accepted drafts per verifying pass', () => {
  const verified = (step, drafts, accepted) => event('drafts_verified', step, {request_id: '0',
    method: 'ngram', draft_token_ids: drafts, num_accepted: accepted,
    token_ids: [...drafts.slice(0, accepted), 99]});
  const fig = speculativeFigure([{events: [engineStarted(), verified(1, [1, 2, 3, 4], 4),
    verified(2, [5, 6, 7, 8], 1), verified(3, [9], 0)]}]);
  assert.deepEqual(fig.value, {passes: 3, drafted: 9, accepted: 5, perPass: 5 / 3});
  assert.equal(fig.text, '1.67 accepted drafts per verifying pass (5 of 9, 55.6%; 2.67 tokens per pass)');
  assert.equal(speculativeFigure([{events: [engineStarted()]}]).text,
    'no pass verified any drafts in this run');
  assert.equal(speculativeBody('p').speculative_config.method, 'ngram');
});

test('preemption: the victims and the blocks they gave back', () => {
  const pre = (step, rid) => event('preempted', step, {request_id: rid, mode: 'recompute', fallback: false});
  const fig = preemptionFigure([{events: [engineStarted(), freed(3, '2', [4, 5, 6]), pre(3, '2'),
    freed(5, '0', [1]), freed(6, '1', [7, 8]), pre(6, '1'), finished(9, '0', 4), finished(9, '1', 4),
    finished(10, '2', 4)]}]);
  assert.deepEqual(fig.value, {preemptions: 2, freed: 5, finished: 3});
  assert.match(fig.text, /^2 preemptions gave back 5 blocks/);
});
