// The tokens lesson's logic (kvscope/scope/static/js/logic/tokens.js) on hand-made
// responses that follow the /scope/api/inside/tokens contract.
import {test, mock} from 'node:test';
import assert from 'node:assert/strict';

import {chipLabel, debounce, hexBytes, kvFormula, kvTotal, latestOnly, quoted, readout,
  showWhitespace, tokensBody} from '../../kvscope/scope/static/js/logic/tokens.js';

const KV = {dtype: 'float32', dtype_bytes: 4, num_layers: 30, num_kv_heads: 3, head_dim: 64,
  kv_bytes_per_token: 46080, kv_bytes: 138240};

const PLAIN = {
  chat: false, rendered: 'Hi there\n\tx', template: null,
  tokens: [
    {id: 17830, text: 'Hi', bytes: [72, 105], special: false},
    {id: 905, text: ' there', bytes: [32, 116, 104, 101, 114, 101], special: false},
    {id: 198, text: '\n\t', bytes: [10, 9], special: false},
  ],
  num_tokens: 3, num_special: 0, num_chars: 11, num_bytes: 11, kv: KV,
};

const CHAT = {
  chat: true, rendered: '<|im_start|>user\nHé<|im_end|>\n', template: '{% for m in messages %}…',
  tokens: [
    {id: 1, text: '<|im_start|>', bytes: [60, 124], special: true},
    {id: 4093, text: 'user', bytes: [117, 115, 101, 114], special: false},
    {id: 198, text: '\n', bytes: [10], special: false},
    {id: 72, text: 'H', bytes: [72], special: false},
    {id: 2000, text: '\ufffd', bytes: [195], special: false},
    {id: 2, text: '<|im_end|>', bytes: [60, 124], special: true},
  ],
  num_tokens: 6, num_special: 2, num_chars: 31, num_bytes: 32,
  kv: {...KV, kv_bytes: 6 * 46080},
};

test('whitespace becomes visible', () => {
  assert.equal(showWhitespace(' the'), '·the');
  assert.equal(showWhitespace('a\n\tb\r'), 'a↵⇥b␍');
  assert.equal(showWhitespace('\u0000\u001b\u007f'), '␀␛␡');
  assert.equal(showWhitespace(''), '∅');
  assert.equal(showWhitespace('café ☕'), 'café·☕');
  assert.equal(showWhitespace('<|im_start|>'), '<|im_start|>');
});

test('bytes as hex, and what a chip says', () => {
  assert.equal(hexBytes([32, 226, 130, 172, 9]), '20 e2 82 ac 09');
  assert.equal(chipLabel(PLAIN.tokens[1], 1), 'token 1: " there", id 905, 6 bytes: 20 74 68 65 72 65');
  assert.equal(chipLabel(CHAT.tokens[0], 0), 'token 0: "<|im_start|>", id 1, special token, 2 bytes: 3c 7c');
  assert.equal(chipLabel(CHAT.tokens[4], 4), 'token 4: "\ufffd", id 2000, 1 byte: c3');
  assert.equal(quoted('\n\t"'), '"\\n\\t\\""');
});

test('the KV cost of the tokens, spelled out', () => {
  assert.equal(kvFormula(KV),
    '2 × 30 layers × 3 KV heads × 64 head dim × 4 bytes (float32) = 46,080 bytes per token');
  assert.equal(kvTotal(PLAIN), '3 tokens × 46,080 bytes = 138,240 bytes');
  assert.equal(kvTotal({...PLAIN, num_tokens: 1, kv: {...KV, kv_bytes: 46080}}),
    '1 token × 46,080 bytes = 46,080 bytes');
});

test('the readout of plain text', () => {
  assert.equal(readout(PLAIN), [
    'mode: plain text',
    'tokens: 3 (0 special)',
    'characters: 11, bytes: 11',
    'pieces: "Hi" 17830 | " there" 905 | "\\n\\t" 198',
    'special: none',
    'KV cache: 3 tokens × 46,080 bytes = 138,240 bytes',
    'per token: 2 × 30 layers × 3 KV heads × 64 head dim × 4 bytes (float32) = 46,080 bytes per token',
  ].join('\n'));
});

test('the readout of a chat message', () => {
  const lines = readout(CHAT, {system: true}).split('\n');
  assert.equal(lines[0], "mode: chat message with a system message, the model's chat template applied");
  assert.equal(lines[1], 'tokens: 6 (2 special)');
  assert.equal(lines[4], 'special: "<|im_start|>", "<|im_end|>"');
  assert.equal(lines[5], 'KV cache: 6 tokens × 46,080 bytes = 276,480 bytes');
  assert.equal(readout(CHAT).split('\n')[0], "mode: chat message, the model's chat template applied");
});

test('the request body', () => {
  assert.deepEqual(tokensBody({text: 'a', chat: false, system: 'ignored'}), {text: 'a', chat: false});
  assert.deepEqual(tokensBody({text: 'a', chat: true, system: '  '}), {text: 'a', chat: true});
  assert.deepEqual(tokensBody({text: 'a', chat: true, system: 'Be brief.'}),
    {text: 'a', chat: true, system: 'Be brief.'});
});

test('debounce runs once, with the last arguments, after the quiet time', () => {
  mock.timers.enable({apis: ['setTimeout']});
  try {
    const calls = [];
    const typed = debounce((v) => calls.push(v), 250);
    typed('a');
    mock.timers.tick(200);
    typed('ab');
    mock.timers.tick(249);
    assert.deepEqual(calls, []);
    mock.timers.tick(1);
    assert.deepEqual(calls, ['ab']);
    typed('abc');
    typed.cancel();
    mock.timers.tick(500);
    assert.deepEqual(calls, ['ab']);
  } finally {
    mock.timers.reset();
  }
});

test('latestOnly keeps one run in flight and runs once more for the calls meanwhile', async () => {
  let input = 'a';
  const seen = [];
  const gates = [];
  const trigger = latestOnly(async () => {
    seen.push(input);
    await new Promise((resolve) => gates.push(resolve));
  });
  const first = trigger();
  input = 'ab';
  trigger();
  input = 'abc';
  const third = trigger();
  assert.equal(first, third);
  assert.deepEqual(seen, ['a']);
  gates.shift()();
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(seen, ['a', 'abc']);
  gates.shift()();
  await first;
  assert.deepEqual(seen, ['a', 'abc']);
  // idle again: a new call runs at once; a failing run does not stop the runner
  const failing = latestOnly(async () => { seen.push('x'); throw new Error('boom'); });
  await failing();
  await failing();
  assert.deepEqual(seen, ['a', 'abc', 'x', 'x']);
});

test('latestOnly with an input key skips a call for the input already running', async () => {
  let input = 'a';
  const seen = [];
  const gates = [];
  const trigger = latestOnly(async () => {
    seen.push(input);
    await new Promise((resolve) => gates.push(resolve));
  }, () => input);
  const first = trigger();
  trigger();  // same input: nothing more to do
  gates.shift()();
  await first;
  assert.deepEqual(seen, ['a']);
  // a changed input while running: one more run
  const second = trigger();
  input = 'b';
  trigger();
  gates.shift()();
  await new Promise((resolve) => setImmediate(resolve));
  gates.shift()();
  await second;
  assert.deepEqual(seen, ['a', 'a', 'b']);
});
