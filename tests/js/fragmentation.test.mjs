import {test} from 'node:test';
import assert from 'node:assert/strict';
import {Timeline} from '../../kvscope/scope/static/js/timeline.js';
import {lineOf, readoutLines, runTotals, schemes, waste}
  from '../../kvscope/scope/static/js/logic/fragmentation.js';
import {allocated, arrived, emitted, engineStarted, scheduled, stepEnd} from './events.mjs';

const measured = (allocatedSlots, held, ownLength) => ({
  allocated_slots: allocatedSlots, filled_slots: held, reserved_max_model_len: 64,
  reserved_own_length: ownLength, tokens_held: held});

// One request of 6 prompt tokens (max_tokens 8) in two blocks of 4, measured after its
// prefill and after one decode step; a second request waits at first.
const EVENTS = [
  engineStarted({block_size: 4, num_blocks: 8, max_model_len: 64}),
  arrived(0, '0', [1, 2, 3, 4, 5, 6]),
  arrived(0, '1', [7, 8, 9]),
  allocated(0, '0', [0, 1]),
  scheduled(0, '0'),
  emitted(0, '0', 10),
  stepEnd(0, [{request_id: '0', start: 0, num_tokens: 6, phase: 'prefill'}],
          {num_running: 1, num_waiting: 1, fragmentation: measured(8, 6, 14)}),
  emitted(1, '0', 11),
  stepEnd(1, [{request_id: '0', start: 6, num_tokens: 1, phase: 'decode'}],
          {num_running: 1, num_waiting: 0, fragmentation: measured(8, 7, 14)}),
];
const ENGINE = EVENTS[0];

test('waste: the share of set-aside slots that hold nothing', () => {
  assert.equal(waste(8, 6), 0.25);
  assert.equal(waste(0, 0), 0);
});

test('schemes: paged against the two contiguous reservations', () => {
  assert.deepEqual(schemes(measured(8, 6, 14), ENGINE), [
    ['paged', 'allocated', 8, 6],
    ['contiguous, max_model_len (64) each', 'reserved', 64, 6],
    ['contiguous, prompt + max_tokens each', 'reserved', 14, 6],
  ]);
  assert.equal(lineOf(['paged', 'allocated', 8, 6]), 'paged: 8 slots allocated, 6 hold tokens, 25.0% unused');
});

test('runTotals adds every step\'s measurement', () => {
  const steps = EVENTS.filter((e) => e.kind === 'step_end');
  assert.deepEqual(runTotals(steps), {allocated_slots: 16, filled_slots: 13, reserved_max_model_len: 128,
                                      reserved_own_length: 28, tokens_held: 13});
  assert.deepEqual(runTotals([]).allocated_slots, 0);
});

test('readoutLines before any step ended', () => {
  const timeline = new Timeline(EVENTS);
  assert.deepEqual(readoutLines(timeline.seek(3), timeline), ['event 3 of 9', 'no step has ended yet']);
});

test('readoutLines after the last step: this step and the run so far', () => {
  const timeline = new Timeline(EVENTS);
  assert.deepEqual(readoutLines(timeline.seek(9), timeline), [
    'event 9 of 9',
    'after step 1 (1 running, 0 waiting):',
    '  paged: 8 slots allocated, 7 hold tokens, 12.5% unused',
    '  contiguous, max_model_len (64) each: 64 slots reserved, 7 hold tokens, 89.1% unused',
    '  contiguous, prompt + max_tokens each: 14 slots reserved, 7 hold tokens, 50.0% unused',
    '  external waste, paged: none by construction (any of the 6 free blocks can extend any '
      + 'request); contiguous: not simulated',
    'run so far (slot-steps, steps 0–1):',
    '  paged: 16 slots allocated, 13 hold tokens, 18.8% unused',
    '  contiguous, max_model_len (64) each: 128 slots reserved, 13 hold tokens, 89.8% unused',
    '  contiguous, prompt + max_tokens each: 28 slots reserved, 13 hold tokens, 53.6% unused',
  ]);
});
