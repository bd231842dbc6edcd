import {test} from 'node:test';
import assert from 'node:assert/strict';
import {Timeline} from '../../kvscope/scope/static/js/timeline.js';
import {arrivalSteps, readoutLines} from '../../kvscope/scope/static/js/logic/paged-attention.js';
import {allocated, arrived, engineStarted, scheduled, stepEnd} from './events.mjs';

// Two requests interleaved in one pool of 6 blocks of 2: 0 gets blocks 0 and 2, 1 gets 1.
const EVENTS = [
  engineStarted({block_size: 2, num_blocks: 6}),
  arrived(0, '0', [1, 2, 3]),
  allocated(0, '0', [0, 2]),
  scheduled(0, '0'),
  stepEnd(0, [{request_id: '0', start: 0, num_tokens: 3, phase: 'prefill'}]),
  arrived(1, '1', [4, 5]),
  allocated(1, '1', [1]),
  scheduled(1, '1'),
];

test('readoutLines: free blocks and each request\'s block table', () => {
  const timeline = new Timeline(EVENTS);
  assert.deepEqual(readoutLines(timeline.seek(8), timeline), [
    'step 1, event 8 of 8',
    'block size: 2 tokens',
    'free blocks: 3 of 6',
    'request 0 (running, 3 tokens computed): [0, 2]',
    'request 1 (running, 0 tokens computed): [1]',
  ]);
});

test('arrivalSteps staggers the requests, or starts them all at once', () => {
  assert.deepEqual(arrivalSteps(3, 2), [0, 2, 4]);
  assert.deepEqual(arrivalSteps(2, NaN), [0, 0]);
});
