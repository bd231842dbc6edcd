import {test} from 'node:test';
import assert from 'node:assert/strict';
import {letter, tag, lines, firstWords, reasonText, cachedText, requestLine, chipLabel, replicaSummary,
  totalsLine, workloadLine, comparison, freeLine, readoutLines, lanes, cachedShare, legendItems, tableRows,
  nextIndex, routingBody} from '../../kvscope/scope/static/js/logic/data-parallel.js';

const req = (index, system, question, replica, reason, matched, chars, loads, tokens, hit) => ({
  index, system, question, replica, reason, matched_chars: matched, prompt_chars: chars, loads,
  prompt_tokens: tokens, hit_tokens: hit, text: ' ok'});
const rep = (replica, requests, queries, hits, free = 20) => ({
  replica, url: `replica ${replica}`, requests, prefix_cache_queries: queries, prefix_cache_hits: hits,
  hit_rate: queries ? hits / queries : 0, num_computed_tokens: queries - hits + requests,
  num_blocks: 20, num_free_blocks: free, all_blocks_free: free === 20});
const totals = (queries, hits, computed, free = true) => ({
  requests: 4, prefix_cache_queries: queries, prefix_cache_hits: hits, hit_rate: hits / queries,
  num_computed_tokens: computed, all_blocks_free: free});

// 2 system prompts × 2 questions on 2 replicas; request i goes to replica i % 2 under
// both policies: round_robin sends request 2 (A2) to replica 0 and request 3 (B2) to
// replica 1 by turn, where their system prompts already are; cache_aware by prefix. Each
// hit is one 16-token block. [system, question, prompt chars, loads, tokens, cached]:
const ARRIVALS = [[0, 0, 45, [0, 0], 20, 0], [1, 0, 65, [1, 0], 24, 0],
                  [0, 1, 45, [0, 1], 20, 16], [1, 1, 65, [1, 0], 24, 16]];
const routed = (policy, reasons, matched) => ({
  policy,
  requests: ARRIVALS.map(([s, q, chars, loads, tokens, hit], i) =>
    req(i, s, q, i % 2, reasons[i], matched[i], chars, loads, tokens, hit)),
  replicas: [rep(0, 2, 40, 16), rep(1, 2, 48, 16)],
  totals: totals(88, 32, 60),
});
const DATA = {
  workload: {systems: ['You are a cook. Answer in one short sentence, please.', 'You are a chess coach.'],
             questions: ['Why?', 'How?'], replicas: 2, max_tokens: 2, block_size: 16, num_blocks: 20,
             prompt_tokens: [20, 24, 20, 24]},
  policies: [routed('round_robin', Array(4).fill('round_robin'), [0, 0, 0, 0]),
             routed('cache_aware', ['no_match', 'no_match', 'prefix', 'prefix'], [0, 8, 40, 60])],
};

const [RR, CA] = DATA.policies;

test('system prompts are letters, questions count from 1', () => {
  assert.equal(letter(0), 'A');
  assert.equal(letter(5), 'F');
  assert.equal(tag(CA.requests[3]), 'B2');
  assert.deepEqual(lines(' first \n\n second\n  '), ['first', 'second']);
  assert.equal(firstWords('one two three', 6), 'one two three');
  assert.equal(firstWords('a b c d e f g h', 6), 'a b c d e f…');
});

test('each reason in words', () => {
  assert.equal(reasonText(RR.requests[0]), 'next in turn');
  assert.equal(reasonText(CA.requests[0]), 'no match (no recent prompt starts the same way): the least loaded');
  assert.equal(reasonText(CA.requests[1]), 'no match (at most 8 of 65 characters shared): the least loaded');
  assert.equal(reasonText(CA.requests[2]), 'prefix: 40 of its 45 characters match a recent prompt there');
  assert.equal(reasonText({...CA.requests[2], reason: 'load'}),
    'load: in-flight counts too uneven, so the least loaded');
  assert.equal(cachedText(CA.requests[3]), '16 of 24 prompt tokens cached');
});

test('request lines, chip labels and summaries', () => {
  assert.equal(requestLine(CA.requests[3]),
    'request 3 (B2) → replica 1: prefix: 60 of its 65 characters match a recent prompt there; '
    + '16 of 24 prompt tokens cached');
  assert.equal(chipLabel(RR.requests[1]), 'request 1, B1: replica 1, round_robin, 0 of 24 prompt tokens cached');
  assert.equal(replicaSummary(RR.replicas[1]), 'replica 1: 2 requests, 16 of 48 prompt tokens cached (33.3%)');
  assert.equal(replicaSummary(rep(0, 1, 0, 0)), 'replica 0: 1 request, 0 of 0 prompt tokens cached (0.0%)');
  assert.equal(totalsLine(RR), 'round_robin: 32 of 88 prompt tokens from the prefix caches (36.4%), 60 tokens computed');
  assert.equal(workloadLine(DATA.workload), '2 system prompts × 2 questions = 4 requests over 2 replicas; '
    + 'blocks of 16 tokens, 20 per replica; 2 tokens generated per request');
});

test('the comparison names the policy that found more cached', () => {
  assert.equal(comparison(DATA),
    'cache_aware and round_robin found the same 32 prompt tokens cached and computed 60 and 60 tokens');
  const better = {...DATA, policies: [{...RR, totals: totals(88, 16, 76)}, CA]};
  assert.equal(comparison(better),
    'cache_aware found 16 more prompt tokens cached than round_robin and computed 16 fewer tokens');
  const worse = {...DATA, policies: [RR, {...CA, totals: totals(88, 0, 92)}]};
  assert.equal(comparison(worse),
    'round_robin found 32 more prompt tokens cached than cache_aware and computed 32 fewer tokens');
});

test('the end state: every block free or cached, or which replica is not', () => {
  assert.equal(freeLine(DATA), 'every replica ends with all 20 blocks free or cached');
  const leaky = {...DATA, policies: [RR, {...CA, replicas: [rep(0, 2, 40, 16), rep(1, 2, 48, 16, 18)]}]};
  assert.equal(freeLine(leaky), 'NOT every block is free at the end: cache_aware replica 1 has 18 of 20 free');
});

test('the readout: workload, then each policy, then the comparison', () => {
  assert.deepEqual(readoutLines(DATA), [
    '2 system prompts × 2 questions = 4 requests over 2 replicas; blocks of 16 tokens, 20 per replica; '
      + '2 tokens generated per request',
    'round_robin: 32 of 88 prompt tokens from the prefix caches (36.4%), 60 tokens computed',
    '  replica 0: 2 requests, 16 of 40 prompt tokens cached (40.0%)',
    '  replica 1: 2 requests, 16 of 48 prompt tokens cached (33.3%)',
    '  request 0 (A1) → replica 0: next in turn; 0 of 20 prompt tokens cached',
    '  request 1 (B1) → replica 1: next in turn; 0 of 24 prompt tokens cached',
    '  request 2 (A2) → replica 0: next in turn; 16 of 20 prompt tokens cached',
    '  request 3 (B2) → replica 1: next in turn; 16 of 24 prompt tokens cached',
    'cache_aware: 32 of 88 prompt tokens from the prefix caches (36.4%), 60 tokens computed',
    '  replica 0: 2 requests, 16 of 40 prompt tokens cached (40.0%)',
    '  replica 1: 2 requests, 16 of 48 prompt tokens cached (33.3%)',
    '  request 0 (A1) → replica 0: no match (no recent prompt starts the same way): the least loaded; '
      + '0 of 20 prompt tokens cached',
    '  request 1 (B1) → replica 1: no match (at most 8 of 65 characters shared): the least loaded; '
      + '0 of 24 prompt tokens cached',
    '  request 2 (A2) → replica 0: prefix: 40 of its 45 characters match a recent prompt there; '
      + '16 of 20 prompt tokens cached',
    '  request 3 (B2) → replica 1: prefix: 60 of its 65 characters match a recent prompt there; '
      + '16 of 24 prompt tokens cached',
    'cache_aware and round_robin found the same 32 prompt tokens cached and computed 60 and 60 tokens',
    'every replica ends with all 20 blocks free or cached',
  ]);
});

test('lanes: one per replica, its requests in arrival order', () => {
  const got = lanes(CA);
  assert.deepEqual(got.map((l) => [l.replica, l.requests.map((r) => r.index), l.summary]), [
    [0, [0, 2], 'replica 0: 2 requests, 16 of 40 prompt tokens cached (40.0%)'],
    [1, [1, 3], 'replica 1: 2 requests, 16 of 48 prompt tokens cached (33.3%)'],
  ]);
  // a replica that got nothing still has its lane
  const idle = {...CA, replicas: [...CA.replicas, rep(2, 0, 0, 0)]};
  assert.deepEqual(lanes(idle)[2].requests, []);
  assert.equal(cachedShare(CA.requests[2]), 0.8);
  assert.equal(cachedShare({...CA.requests[2], prompt_tokens: 0, hit_tokens: 0}), 0);
});

test('legend and table rows', () => {
  assert.deepEqual(legendItems(DATA.workload.systems), [
    {system: 0, letter: 'A', text: 'You are a cook. Answer in…'},
    {system: 1, letter: 'B', text: 'You are a chess coach.'},
  ]);
  assert.deepEqual(tableRows(DATA)[1], {index: 1, tag: 'B1', system: 1, cells: [
    {replica: 1, reason: 'round_robin', cached: '0 / 24'},
    {replica: 1, reason: 'no_match', cached: '0 / 24'}]});
  assert.equal(tableRows(DATA).length, 4);
});

test('keys move through the requests in arrival order', () => {
  assert.equal(nextIndex('ArrowRight', 2, 4), 3);
  assert.equal(nextIndex('ArrowRight', 3, 4), 3);
  assert.equal(nextIndex('ArrowDown', 0, 4), 1);
  assert.equal(nextIndex('ArrowLeft', 0, 4), 0);
  assert.equal(nextIndex('ArrowUp', 2, 4), 1);
  assert.equal(nextIndex('Home', 2, 4), 0);
  assert.equal(nextIndex('End', 0, 4), 3);
  assert.equal(nextIndex('a', 0, 4), null);
});

test('the request body from the form', () => {
  assert.deepEqual(routingBody({systems: 'one\n\n two \n', questions: 'q1\nq2', replicas: 3, maxTokens: 4}),
    {systems: ['one', 'two'], questions: ['q1', 'q2'], replicas: 3, max_tokens: 4, block_size: 16});
  assert.throws(() => routingBody({systems: 'one', questions: 'a\nb', replicas: 2, maxTokens: 4}),
    /give 2 to 6 system prompts, one per line \(got 1\)/);
  assert.throws(() => routingBody({systems: 'a\nb', questions: 'a', replicas: 2, maxTokens: 4}),
    /give 2 to 8 questions, one per line \(got 1\)/);
});
