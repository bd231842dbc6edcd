// The sampling lesson's DOM-free logic (kvscope/scope/static/js/logic/sampling.js),
// on a hand-made response that follows the /scope/api/inside/sampling contract.
import {test, mock} from 'node:test';
import assert from 'node:assert/strict';

import {candidateRows, controlText, debounce, latestOnly, paramsLine, probText, readoutLines, requestBody}
  from '../../kvscope/scope/static/js/logic/sampling.js';

const response = {
  tokens: ['The', ' cat', ' sat'],
  token_ids: [504, 2644, 3290],
  vocab_size: 49152,
  params: {temperature: 0.7, top_k: 0, top_p: 0.9, min_p: 0, seed: 3},
  candidates: [
    {rank: 1, id: 335, text: ' on', logit: 21.5, prob: 0.6, prob_scaled: 0.8, survives: true, prob_final: 0.888889},
    {rank: 2, id: 28, text: '\n', logit: 19.25, prob: 0.2, prob_scaled: 0.1, survives: true, prob_final: 0.111111},
    {rank: 3, id: 1032, text: ' down', logit: 18, prob: 0.05, prob_scaled: 0.04, survives: false, prob_final: 0},
  ],
  num_survivors: 2,
  survivor_ids: [335, 28],
  drawn: {id: 28, text: '\n', prob_final: 0.111111},
  greedy: {id: 335, text: ' on'},
};

test('controls say what their value means', () => {
  assert.equal(controlText('temperature', '0'), '0 (greedy)');
  assert.equal(controlText('temperature', '0.75'), '0.75');
  assert.equal(controlText('top_k', '0'), '0 (off)');
  assert.equal(controlText('top_k', '40'), '40');
  assert.equal(controlText('top_p', '1'), '1 (off)');
  assert.equal(controlText('top_p', '0.95'), '0.95');
  assert.equal(controlText('min_p', '0'), '0 (off)');
  assert.equal(controlText('min_p', '0.05'), '0.05');
  assert.equal(controlText('seed', '7'), '7');
});

test('the request body takes the controls as numbers, defaults for blanks', () => {
  assert.deepEqual(requestBody('Hi', {temperature: '0.5', top_k: '10', top_p: '0.9', min_p: '0.1',
                                       seed: ' 42 ', show: '20'}),
                   {prompt: 'Hi', temperature: 0.5, top_k: 10, top_p: 0.9, min_p: 0.1, seed: 42, show: 20});
  assert.deepEqual(requestBody('Hi', {temperature: '', seed: ''}),
                   {prompt: 'Hi', temperature: 1, top_k: 0, top_p: 1, min_p: 0, seed: 0, show: 20});
});

test('candidate rows: widths against the largest probability shown, filtered ones marked', () => {
  const rows = candidateRows(response);
  assert.equal(rows.length, 3);
  assert.deepEqual(rows.map((r) => r.token), ['" on"', '"\\n"', '" down"']);
  assert.deepEqual(rows.map((r) => r.survives), [true, true, false]);
  assert.equal(rows[0].afterWidth, 100);
  assert.equal(rows[0].beforeWidth, (100 * 0.8) / 0.888889);
  assert.equal(rows[2].afterWidth, 0);
  assert.equal(rows[2].beforeWidth, (100 * 0.04) / 0.888889);
  assert.equal(rows[2].label, 'rank 3, token " down" (id 1032): logit 18, p at temperature 1 0.05, '
    + 'after temperature 0.04, filtered out');
  assert.equal(rows[0].label, 'rank 1, token " on" (id 335): logit 21.5, p at temperature 1 0.6, '
    + 'after temperature 0.8, kept, drawn with p 0.888889');
  const greedy = {...response, params: {...response.params, temperature: 0}};
  assert.equal(candidateRows(greedy)[2].label, 'rank 3, token " down" (id 1032): logit 18, '
    + 'p at temperature 1 0.05, filtered out');
});

test('params line names the filters that are off', () => {
  assert.equal(paramsLine(response.params), 'temperature 0.7, top-k 0 (off), top-p 0.9, min-p 0 (off), seed 3');
  assert.equal(paramsLine({temperature: 0, top_k: 5, top_p: 1, min_p: 0.1, seed: 0}),
               'temperature 0 (greedy), top-k 5, top-p 1 (off), min-p 0.1, seed 0');
});

test('the readout lists survivors, the seeded draw and the greedy token', () => {
  assert.deepEqual(readoutLines(response), [
    'prompt: 3 tokens, the next token after " sat"',
    'temperature 0.7, top-k 0 (off), top-p 0.9, min-p 0 (off), seed 3',
    'survivors: 2 of 49152 tokens',
    'kept among the 3 most likely: " on" 0.888889, "\\n" 0.111111',
    'filtered among the 3 most likely: 1',
    'drawn with seed 3: "\\n" (id 28), p 0.111111',
    'greedy: " on" (id 335)',
  ]);
  const none = {...response, candidates: response.candidates.map((c) => ({...c, survives: false}))};
  assert.equal(readoutLines(none)[3], 'kept among the 3 most likely: none');
});

test('debounce: one call, with the latest arguments, after the quiet time', () => {
  mock.timers.enable({apis: ['setTimeout']});
  try {
    const calls = [];
    const d = debounce((x) => calls.push(x), 200);
    d(1);
    mock.timers.tick(150);
    d(2);
    mock.timers.tick(199);
    assert.deepEqual(calls, []);
    mock.timers.tick(1);
    assert.deepEqual(calls, [2]);
    d(3);
    d.cancel();
    mock.timers.tick(500);
    assert.deepEqual(calls, [2]);
  } finally {
    mock.timers.reset();
  }
});

test('latestOnly: one run at a time, then the latest queued call', async () => {
  const started = [];
  const releases = [];
  const go = latestOnly((x) => new Promise((resolve) => {
    started.push(x);
    releases.push(resolve);
  }));
  go('a');
  go('b');
  go('c');
  assert.deepEqual(started, ['a']);
  releases[0]();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(started, ['a', 'c']);
  releases[1]();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(started, ['a', 'c']);
});

test('probabilities as percentages, small ones with two significant digits', () => {
  assert.equal(probText(0), '0%');
  assert.equal(probText(0.5), '50.0%');
  assert.equal(probText(0.001), '0.1%');
  assert.equal(probText(0.000123), '0.012%');
  assert.equal(probText(1), '100.0%');
});
