import {test} from 'node:test';
import assert from 'node:assert/strict';
import {Timeline} from '../../kvscope/scope/static/js/timeline.js';
import {beamColumns, liveBeams} from '../../kvscope/scope/static/js/state.js';
import {beamTokens, ended, fixed2, finishedLines, nodeLabel, nodeTitle, openingStop, poolBlocks,
  prunedSoFar, readoutLines, textOf, thisStep, treeSummary}
  from '../../kvscope/scope/static/js/logic/beam-search.js';
import {allocated, arrived, engineStarted, event, finished, freed, scheduled, stepEnd}
  from './events.mjs';

const forked = (step, rid, blockIds, computed) => event('sequence_forked', step,
  {request_id: rid, parent_id: '0', block_ids: blockIds, num_computed_tokens: computed});
const beam = (rid, parent, token, score) => ({request_id: rid, parent_id: parent, token_id: token, score});
const beamStep = (step, beams, done, finishedList = []) => event('beam_step', step,
  {request_id: '0', beams, finished: finishedList, done});
const decode = (...rids) => rids.map((rid) => ({request_id: rid, start: 3, num_tokens: 1, phase: 'decode'}));
const B_ENDED = {token_ids: [11, 16], score: -1.5, finish_reason: 'stop'};
const A_ENDED = {token_ids: [10, 12, 14], score: -0.9, finish_reason: 'stop'};

// Beam width 2 over a 3-token prompt in blocks of 2. Step 0 forks 0~1. At step 1 beam 0
// is continued twice (0~2 forked from it) and 0~1 is pruned, its candidate having ended
// ("B!" joins the finished list); it lets go of blocks 0 and 2, and only 2 comes free.
// Step 2 ends the search.
const EVENTS = [
  engineStarted({block_size: 2, num_blocks: 8}),
  arrived(0, '0', [1, 2, 3]),
  allocated(0, '0', [0, 1]),
  scheduled(0, '0'),
  forked(0, '0~1', [0, 1], 3),
  beamStep(0, [beam('0', '0', 10, -0.5), beam('0~1', '0', 11, -1.25)], false),
  stepEnd(0, [{request_id: '0', start: 0, num_tokens: 3, phase: 'prefill'}]),  // stop 7
  event('copy_on_write', 1, {request_id: '0~1', src_block_id: 1, dst_block_id: 2}),
  forked(1, '0~2', [0, 1], 4),  // 8
  freed(1, '0~1', [0, 2]),
  finished(1, '0~1', 1, 'pruned'),  // 10
  beamStep(1, [beam('0', '0', 12, -0.75), beam('0~2', '0', 13, -1.0)], false, [B_ENDED]),
  stepEnd(1, decode('0', '0~1')),  // stop 13
  beamStep(2, [], true, [A_ENDED, B_ENDED]),
  freed(2, '0', [0, 1]),
  finished(2, '0', 2, 'beam_search_done'),
  freed(2, '0~2', [0, 1]),
  finished(2, '0~2', 2, 'beam_search_done'),
  stepEnd(2, decode('0', '0~2')),  // stop 19
];
const TEXTS = new Map([[10, 'A'], [11, 'B'], [12, 'C'], [13, 'D'], [14, 'E'], [16, '!']]);
const RUN = {width: 2, lengthPenalty: 1, completions: [
  {text: 'ACE', cumulative_logprob: -0.9, finish_reason: 'stop'},
  {text: 'B!', cumulative_logprob: -1.5, finish_reason: 'stop'},
]};

function at(pos) {
  const timeline = new Timeline(EVENTS);
  return {state: timeline.seek(pos), timeline};
}

test('fixed2 and textOf', () => {
  assert.deepEqual([fixed2(-0.755), fixed2(null), fixed2(undefined)], ['-0.76', '—', '—']);
  assert.equal(textOf(TEXTS, [10, 15, 16]), 'A[15]!');
});

test('beamTokens: every token of the beams and of the finished answers, once', () => {
  assert.deepEqual([...beamTokens(EVENTS)], [10, 11, 12, 13, 16, 14]);
});

test('thisStep: the fork, the prune and the block that came free', () => {
  const {state, timeline} = at(13);
  assert.deepEqual(thisStep(state, timeline), {
    forked: [EVENTS[8]],
    pruned: [{id: '0~1', released: [0, 2]}],
    back: [2],  // block 0 is still held by beams 0 and 0~2
  });
  const end = at(19);
  assert.deepEqual(thisStep(end.state, end.timeline), {forked: [], pruned: [], back: []});
});

test('a pruned beam whose candidate ended counts as ended', () => {
  const {state} = at(13);
  assert.deepEqual(prunedSoFar(state), ['0~1']);
  assert.equal(ended(state, '0~1'), true);
});

test('readoutLines after the pruning step', () => {
  const {state, timeline} = at(13);
  assert.deepEqual(readoutLines(RUN, TEXTS, state, timeline), [
    'step 1, event 13 of 19',
    'beam width 2, length penalty 1; beam steps so far: 2',
    'live beams, best first:',
    '  0: score -0.75, blocks [0, 1], "AC"',
    '  0~2: score -1.00, blocks [0, 1], "AD"',
    'forked at this step: 0~2 from 0',
    'pruned at this step: 0~1 (ended: joined the finished list)',
    '  0~1 let go of blocks 0, 2; back in the free pool: 2',
    'freed by pruning at this step: 2',
    'beams pruned so far: 0~1 (ended)',
    'finished, best first:',
    '  1. score -1.50, stop, "B!"',
    'free blocks: 6 of 8',
  ]);
});

test('readoutLines when the search is done lists the API\'s final beams', () => {
  const {state, timeline} = at(19);
  assert.deepEqual(readoutLines(RUN, TEXTS, state, timeline), [
    'step 2, event 19 of 19',
    'beam width 2, length penalty 1; beam steps so far: 3',
    'live beams: none',
    'forked at this step: none',
    'pruned at this step: none',
    'freed by pruning at this step: none',
    'beams pruned so far: 0~1 (ended)',
    'finished, best first:',
    '  1. score -0.90, stop, "ACE"',
    '  2. score -1.50, stop, "B!"',
    'free blocks: 8 of 8',
    'final beams, best first (the API\'s output):',
    '  1. log-probability -0.90, stop, "ACE"',
    '  2. log-probability -1.50, stop, "B!"',
  ]);
  assert.deepEqual(finishedLines(TEXTS, undefined), ['finished: none yet']);
});

test('treeSummary and nodeTitle describe the tree in words', () => {
  const {state} = at(13);
  const columns = beamColumns(state.beamSearches['0']);
  assert.equal(treeSummary(columns, liveBeams(state, '0'), prunedSoFar(state)),
    'Beam tree after 2 beam steps: live beams, best first: 0, 0~2; 1 beam pruned so far.');
  assert.equal(treeSummary([], [], []), 'No beam step yet: the prompt is being computed.');
  assert.equal(treeSummary(columns, [], ['0~1']),
    'Beam tree after 2 beam steps: no beam is running; 1 beam pruned so far.');
  assert.equal(nodeTitle(TEXTS, 0, columns[0][0]), 'step 0: beam 0 added "A", score -0.50, continued by 2 beams');
  assert.equal(nodeTitle(TEXTS, 0, columns[0][1]), 'step 0: beam 0~1 (forked) added "B", score -1.25, '
    + 'pruned at the next step; its candidate at the next step ended and joined the finished list');
  assert.equal(nodeTitle(TEXTS, 1, columns[1][1]), 'step 1: beam 0~2 (forked) added "D", score -1.00');
});

test('nodeLabel shortens long tokens and shows newlines', () => {
  const texts = new Map([[1, 'abcdefghijklmn'], [2, 'a\nb']]);
  assert.deepEqual([nodeLabel(texts, 1), nodeLabel(texts, 2), nodeLabel(texts, 3)], ['abcdefghij…', 'a⏎b', '#3']);
});

test('the page opens after the first pruning, else at the first step', () => {
  assert.equal(openingStop(new Timeline(EVENTS)), 13);
  assert.equal(openingStop(new Timeline(EVENTS.slice(0, 8))), 7);
  assert.equal(openingStop(new Timeline(EVENTS.slice(0, 3))), 3);
});

test('poolBlocks: the prompt and, per beam, its blocks and one being copied', () => {
  assert.equal(poolBlocks(3, 2, 4, 2), 2 + 2 * 4 + 4);
  assert.equal(poolBlocks(NaN, 2, 4, 2), 64);
});
