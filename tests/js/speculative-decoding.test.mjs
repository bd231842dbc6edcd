import {test} from 'node:test';
import assert from 'node:assert/strict';
import {Timeline} from '../../kvscope/scope/static/js/timeline.js';
import {chartSummary, compareLine, methodLine, poolBlocks, readoutLines, sameText, slotBlocks,
  speculativeRun, stepSoFar, trimLine, verdictLine, verifyRows}
  from '../../kvscope/scope/static/js/logic/speculative-decoding.js';
import {allocated, arrived, emitted, engineStarted, event, finished, freed, scheduled, stepEnd}
  from './events.mjs';

const verified = (step, drafts, accepted, tokens) => event('drafts_verified', step,
  {request_id: '0', method: 'ngram', draft_token_ids: drafts, num_accepted: accepted, token_ids: tokens});
const verify = (start, drafts) => ({request_id: '0', start, num_tokens: drafts + 1, phase: 'verify',
                                    num_draft_tokens: drafts});

// A 5-token prompt in blocks of 4. Step 1 drafts 3 tokens, the target accepts 1 and
// corrects the second; the block holding only the rejected third draft is trimmed.
// Step 2 drafts 2, both accepted, and the target adds a bonus token.
const EVENTS = [
  engineStarted({block_size: 4, num_blocks: 8, num_layers: 2}),
  arrived(0, '0', [1, 2, 3, 4, 5]),
  allocated(0, '0', [0, 1]),
  scheduled(0, '0'),
  emitted(0, '0', 10, 'a'),
  stepEnd(0, [{request_id: '0', start: 0, num_tokens: 5, phase: 'prefill'}]),  // stop 6
  allocated(1, '0', [2]),
  verified(1, [11, 12, 13], 1, [11, 14]),  // 7
  event('blocks_trimmed', 1, {request_id: '0', block_ids: [2]}),
  emitted(1, '0', 11, 'b'),
  emitted(1, '0', 14, '\n'),
  stepEnd(1, [verify(5, 3)]),  // stop 12
  allocated(2, '0', [3]),
  verified(2, [15, 16], 2, [15, 16, 17]),  // 13
  emitted(2, '0', 15, ''),
  emitted(2, '0', 16, 'f'),
  emitted(2, '0', 17, 'g'),
  finished(2, '0', 6),
  freed(2, '0', [0, 1, 3]),
  stepEnd(2, [verify(7, 2)]),  // stop 20
];
const OUTPUT = {token_ids: [10, 11, 14, 15, 16, 17], text: 'ab\nfg'};
const TEXTS = {10: 'a', 11: 'b', 12: 'c', 13: 'd', 14: '\n', 15: '', 16: 'f', 17: 'g'};
const NGRAM = {speculative_config: {method: 'ngram', num_speculative_tokens: 3, prompt_lookup_max: 3}};

function runWith(plain = OUTPUT, body = NGRAM) {
  const data = {events: EVENTS, token_texts: TEXTS, outputs: [OUTPUT],
                plain: plain ? {outputs: [plain]} : null};
  return speculativeRun(data, body);
}

function readoutAt(pos, run = runWith()) {
  const timeline = new Timeline(EVENTS);
  return readoutLines(run, timeline.seek(pos), timeline);
}

test('speculativeRun records each pass with its known token, position and block table', () => {
  const run = runWith();
  assert.equal(run.bs, 4);
  assert.equal(run.numLayers, 2);
  assert.deepEqual(run.passes, [
    {index: 7, step: 1, drafts: [11, 12, 13], accepted: 1, tokens: [11, 14], known: 10, start: 5, table: [0, 1, 2]},
    {index: 13, step: 2, drafts: [15, 16], accepted: 2, tokens: [15, 16, 17], known: 14, start: 7, table: [0, 1, 3]},
  ]);
  assert.deepEqual(run.steps.get(1).trims, [{index: 8, blocks: [2], rejected: true}]);
  assert.deepEqual(run.steps.get(2).finished, {index: 17, reason: 'length', tokens: 6});
  assert.equal(run.texts.get(14), '\n');
});

test('stepSoFar shows only what happened before the position', () => {
  const run = runWith();
  const mid = stepSoFar(run, 1, 8);
  assert.equal(mid.verify, run.passes[0]);
  assert.deepEqual([mid.trims, mid.emitted, mid.end], [[], [], null]);
  const done = stepSoFar(run, 1, 12);
  assert.deepEqual(done.emitted, [{index: 9, id: 11}, {index: 10, id: 14}]);
  assert.equal(done.end.chunk.phase, 'verify');
  assert.equal(stepSoFar(run, 9, 20).verify, null);  // a step the run never had
});

test('readoutLines after the prefill, after a correction and at the end', () => {
  assert.deepEqual(readoutAt(1), [
    'step 0, event 1 of 20',
    'method: n-gram lookup, k = 3, longest n-gram 3',
    'request 0 has not arrived yet',
    'plain greedy run without speculation: identical token ids (6 tokens)',
  ]);
  assert.deepEqual(readoutAt(6).slice(2, 7), [
    'step 0: prefill of 5 prompt tokens, no drafts',
    'run so far: no verifying pass yet',
    'draft KV slots this step: none',
    'blocks trimmed this step: none',
    'tokens emitted this step: 1; output so far: 1 token',
  ]);
  assert.deepEqual(readoutAt(12), [
    'step 1, event 12 of 20',
    'method: n-gram lookup, k = 3, longest n-gram 3',
    'step 1: drafted 3 ("b", "c", "d"), accepted 1, target added 1 (correction "\\n")',
    'run so far: 3 drafted, 1 accepted (33.3%), 2.00 tokens per verifying pass (1 pass)',
    'draft KV slots this step: 3 (positions 6–8) in blocks 1, 2',
    'blocks trimmed this step: 1 (2: only rejected drafts)',
    'tokens emitted this step: 2; output so far: 3 tokens',
    'plain greedy run without speculation: identical token ids (6 tokens)',
  ]);
  assert.deepEqual(readoutAt(20).slice(2), [
    'step 2: drafted 2 ("", "f"), accepted 2, target added 1 (bonus "g")',
    'run so far: 5 drafted, 3 accepted (60.0%), 2.50 tokens per verifying pass (2 passes)',
    'draft KV slots this step: 2 (positions 8–9) in block 3',
    'blocks trimmed this step: none',
    'tokens emitted this step: 3; output so far: 6 tokens',
    'request 0 finished (length) after 6 tokens',
    'plain greedy run without speculation: identical token ids (6 tokens)',
  ]);
});

test('verdictLine for a step without a verifying pass', () => {
  const run = runWith();
  const none = {verify: null, trims: [], emitted: [], end: null, finished: null};
  assert.equal(verdictLine(run, 3, none), 'step 3: nothing verified yet');
  assert.equal(verdictLine(run, 3, {...none, end: {chunk: null}}), 'step 3: request 0 not in the batch');
  assert.equal(verdictLine(run, 3, {...none, end: {chunk: {phase: 'decode', num_tokens: 1}}}),
    'step 3: no drafts, a plain decode of 1 token');
});

test('trimLine tells scratch slots from rejected drafts', () => {
  const now = {trims: [{blocks: [5], rejected: false}, {blocks: [2], rejected: true}]};
  assert.equal(trimLine(now), 'blocks trimmed this step: 2 (5: slots the draft passes borrowed; 2: only rejected drafts)');
});

test('methodLine of the early-exit draft defaults to half the layers', () => {
  const run = runWith(OUTPUT, {speculative_config: {method: 'early_exit', num_speculative_tokens: 2}});
  assert.equal(methodLine(run), 'method: early-exit self-draft, k = 2, drafts from the first 1 of 2 layers');
});

test('compareLine and sameText against the plain greedy run', () => {
  const same = runWith();
  assert.equal(sameText(same), 'Identical token ids: the server ran the prompt again without '
    + 'speculation and all 6 tokens came out the same.');
  const differs = runWith({token_ids: [10, 11, 99], text: 'ab?'});
  assert.equal(compareLine(differs),
    'plain greedy run without speculation: differs from token 2 on (speculative 6 tokens, plain 3)');
  assert.equal(sameText(differs), 'The two runs differ from token 2 on.');
  const alone = runWith(null);
  assert.equal(compareLine(alone), 'plain greedy run without speculation: not run');
  assert.equal(sameText(alone), '');
});

test('verifyRows: accepted drafts, the correction, the rows not used', () => {
  const run = runWith();
  assert.deepEqual(verifyRows(run, run.passes[0]), [
    {kind: 'acc', input: 'a', choice: 'b', checked: 'b', verdict: 'same: draft accepted'},
    {kind: 'fix', input: 'b', choice: '⏎', checked: 'c', verdict: 'differs: draft rejected, target\'s token instead'},
    {kind: 'unused', input: 'c', choice: '—', checked: 'd', verdict: 'not used (after the first rejection)'},
    {kind: 'unused', input: 'd', choice: '—', checked: '— (past the last draft)',
     verdict: 'not used (after the first rejection)'},
  ]);
  assert.deepEqual(verifyRows(run, run.passes[1]).map((r) => [r.kind, r.input, r.choice]),
    [['acc', '⏎', '∅'], ['acc', '∅', 'f'], ['bonus', 'f', 'g']]);
});

test('slotBlocks: the slots of the known token and the drafts, block by block', () => {
  const run = runWith();
  const {first, blocks} = slotBlocks(run, run.passes[0], new Set([2]));
  assert.equal(first, 1);
  assert.deepEqual(blocks.map((b) => [b.id, b.logical, b.trimmed]), [[1, 1, false], [2, 2, true]]);
  assert.deepEqual(blocks[0].cells, [
    {kind: 'ctx', text: '', label: 'position 4: an earlier token'},
    {kind: 'known', text: 'a', label: 'position 5: the known token "a"'},
    {kind: 'acc', text: 'b', label: 'position 6: draft 1 "b", accepted'},
    {kind: 'rej', text: 'c', label: 'position 7: draft 2 "c", rejected'},
  ]);
  assert.deepEqual(blocks[1].cells.map((c) => c.label), [
    'position 8: draft 3 "d", rejected',
    'position 9: not written at this step',
    'position 10: not written at this step',
    'position 11: not written at this step',
  ]);
});

test('chartSummary counts the passes folded so far', () => {
  const timeline = new Timeline(EVENTS);
  const req = timeline.seek(20).requests['0'];
  assert.equal(chartSummary(req), '2 verifying passes so far: 5 drafts, 3 accepted. Latest, step 2: '
    + '2 drafted, 2 accepted. Each bar: accepted drafts (green), rejected drafts (red) and the '
    + 'target\'s token (blue: bonus, orange: correction).');
  assert.equal(chartSummary({verifications: [], draftTokens: 0, acceptedTokens: 0}), 'No verifying pass yet.');
});

test('poolBlocks: room for prompt, answer and drafts, within 8 to 512', () => {
  assert.equal(poolBlocks(5, 4, 6, 3), 2 + 3 + 4);
  assert.equal(poolBlocks(1, 64, 1, 1), 8);
  assert.equal(poolBlocks(4000, 1, 64, 8), 512);
  assert.equal(poolBlocks(NaN, 4, 6, 3), 64);
});
