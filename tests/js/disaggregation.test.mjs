import {test} from 'node:test';
import assert from 'node:assert/strict';
import {lifecycleOrder, entries, entryLine, heldAt, headerLine, sideLine, movedLine, tokensLine,
  readoutLines, counters, perTokenFormula, disaggBody, blocksText, tokenText, bytesText, ms}
  from '../../kvscope/scope/static/js/logic/disaggregation.js';
import {engineStarted, event, arrived, allocated, scheduled, freed, emitted, finished, stepEnd} from './events.mjs';

// A 6-token prompt on blocks of 4 (256 KV bytes per token: 2 × 2 layers × 2 KV heads × 8
// × 4 bytes), 3 tokens generated: the producer computes the prompt in one step and
// samples token 7; the consumer loads the 6 rows into blocks 0 and 1, takes token 7 and
// decodes 8 and 9, needing no third block (6 + 3 - 1 = 8 slots).
const PROMPT = [1, 2, 3, 4, 5, 6];
const kv = (step, direction, numTokens, numBytes, seconds, fields = {}) => event('kv_transferred', step,
  {request_id: '0', direction, num_tokens: numTokens, num_bytes: numBytes, seconds, ok: true, reason: '',
   ...fields});
const prefillChunk = {request_id: '0', start: 0, num_tokens: 6, phase: 'prefill'};
const decodeChunk = (start) => ({request_id: '0', start, num_tokens: 1, phase: 'decode'});

// the ZmqConnector producer: its blocks are held until the consumer took the rows
const ZMQ_PREFILL = [
  engineStarted(), arrived(0, '0', PROMPT, {max_tokens: 1}), event('step_begin', 0),
  allocated(0, '0', [3, 5]), scheduled(0, '0'), emitted(0, '0', 7, ' sea'), finished(0, '0', 1),
  stepEnd(0, [prefillChunk], {forward_ms: 12.34}),
  kv(1, 'send', 6, 1536, 0.000125), kv(1, 'release', 0, 0, 0, {reason: 'taken'}), freed(1, '0', [5, 3])];
const DECODE = [
  engineStarted(), arrived(0, '0', PROMPT, {max_tokens: 3}), allocated(0, '0', [0, 1]),
  kv(0, 'load', 6, 1536, 0.0025), scheduled(0, '0', 6), emitted(0, '0', 7, ' sea'),
  event('step_begin', 0), emitted(0, '0', 8, ' and'), stepEnd(0, [decodeChunk(6)], {forward_ms: 3.25}),
  event('step_begin', 1), emitted(1, '0', 9, '\n'), freed(1, '0', [1, 0]), finished(1, '0', 3),
  stepEnd(1, [decodeChunk(7)], {forward_ms: 2.5})];
const stats = (prompt, computed, steps) => ({num_computed_tokens: computed, num_computed_prompt_tokens: prompt,
  num_steps: steps, num_used_blocks: 0, num_free_blocks: 8, num_blocks: 8});
const PARAMS = {do_remote_prefill: true, num_tokens: 6, first_token_id: 7, remote_request_id: '0',
                prompt_key: 'ab', remote_host: '127.0.0.1', remote_port: 5555};
const run = (prefillEvents, decodeEvents = DECODE, fields = {}) => ({
  connector: 'ZmqConnector', kv_transfer_params: PARAMS, prompt_token_ids: PROMPT,
  output: {token_ids: [7, 8, 9], text: ' sea and\n'}, single: {token_ids: [7, 8, 9], identical: true},
  prefill: {events: prefillEvents, stats: stats(6, 6, 1)}, decode: {events: decodeEvents, stats: stats(0, 2, 2)},
  ...fields});
const ZMQ = run(ZMQ_PREFILL);

// the SharedStorageConnector producer: it writes the rows and frees its blocks at once
const STORAGE_PREFILL = [
  engineStarted(), arrived(0, '0', PROMPT, {max_tokens: 1}), event('step_begin', 0),
  allocated(0, '0', [0, 1]), scheduled(0, '0'), emitted(0, '0', 7, ' sea'),
  kv(0, 'save', 6, 1536, 0.0105), freed(0, '0', [1, 0]), finished(0, '0', 1),
  stepEnd(0, [prefillChunk], {forward_ms: 12.34})];
const STORAGE = run(STORAGE_PREFILL, DECODE, {connector: 'SharedStorageConnector'});

test('the small formats', () => {
  assert.equal(blocksText([4]), 'block 4');
  assert.equal(blocksText([1, 0]), 'blocks 1, 0');
  assert.equal(tokenText(9, '\n'), '9 "\\n"');
  assert.equal(bytesText(599040), '599,040 bytes (585 KiB)');
  assert.equal(bytesText(1536), '1,536 bytes (1.50 KiB)');
  assert.equal(ms(0.125, 2), '0.13 ms');
  assert.equal(ms(2008.38), '2008.4 ms');
});

test('the lifecycle: the prefill up to its last step, the decode, then what the producer noticed later', () => {
  const order = lifecycleOrder(ZMQ);
  assert.deepEqual(order.slice(0, 8).map(([s]) => s), Array(8).fill('prefill'));
  assert.deepEqual(order.slice(8, 8 + DECODE.length), DECODE.map((_, i) => ['decode', i]));
  assert.deepEqual(order.slice(-3), [['prefill', 8], ['prefill', 9], ['prefill', 10]]);
  assert.deepEqual(lifecycleOrder(STORAGE).slice(-1), [['decode', DECODE.length - 1]]);
});

test('one line per lifecycle event, on both servers', () => {
  const list = entries(ZMQ);
  assert.deepEqual(list.map(entryLine), [
    'prefill: request 0 arrived: 6 prompt tokens, max_tokens 1',
    'prefill: blocks 3, 5 allocated',
    'prefill: scheduled with 0 tokens already computed',
    'prefill: step 0: prefill 6 tokens at positions 0–5, forward 12.3 ms, first token 7 " sea" sampled',
    'prefill: request 0 finished (length) after 1 token',
    'decode: request 0 arrived with kv_transfer_params (num_tokens 6, first_token_id 7): 6 prompt tokens, max_tokens 3',
    'decode: blocks 0, 1 allocated',
    'decode: K/V loaded: 6 tokens, 1,536 bytes (1.50 KiB) in 2.50 ms into blocks 0, 1',
    'decode: scheduled with 6 tokens already computed',
    'decode: first token 7 " sea" taken from the prefill server (not computed here)',
    'decode: step 0: decode 1 token at position 6, forward 3.3 ms, token 8 " and" sampled',
    'decode: step 1: decode 1 token at position 7, forward 2.5 ms, token 9 "\\n" sampled',
    'decode: blocks 1, 0 freed',
    'decode: request 0 finished (length) after 3 tokens',
    'prefill: K/V sent to the decode server: 6 tokens, 1,536 bytes (1.50 KiB), copied out in 0.13 ms',
    'prefill: hold released: the decode server took the K/V',
    'prefill: blocks 5, 3 freed (after the decode server took the K/V)',
  ]);
  assert.deepEqual(list.filter((e) => e.transfer).map((e) => e.index), [3, 8, 9]);
  assert.deepEqual(list.filter((e) => e.fromProducer).map((e) => [e.side, e.index]), [['decode', 5]]);
  assert.deepEqual(entries(STORAGE).slice(3, 6).map(entryLine), [
    'prefill: step 0: prefill 6 tokens at positions 0–5, forward 12.3 ms, first token 7 " sea" sampled',
    'prefill: K/V saved to shared storage: 6 tokens, 1,536 bytes (1.50 KiB) in 10.50 ms',
    'prefill: blocks 1, 0 freed (its K/V is in shared storage)',
  ]);
});

test('the blocks each server holds as the lifecycle goes on', () => {
  const list = entries(ZMQ);
  assert.deepEqual(heldAt(list, -1), {prefill: [], decode: []});
  assert.deepEqual(heldAt(list, 1), {prefill: [3, 5], decode: []});
  // the producer still holds its blocks while the consumer decodes
  assert.deepEqual(heldAt(list, 7), {prefill: [3, 5], decode: [0, 1]});
  assert.deepEqual(heldAt(list, 12), {prefill: [3, 5], decode: []});
  assert.deepEqual(heldAt(list, list.length - 1), {prefill: [], decode: []});
  assert.deepEqual(heldAt(entries(STORAGE), 6), {prefill: [], decode: []});
});

test('a step that samples no token, a second token in one step, a prefix-cache hit', () => {
  const prefill = [engineStarted(), arrived(0, '0', PROMPT, {max_tokens: 1}), event('step_begin', 0),
    allocated(0, '0', [2], [2]), event('blocks_shared', 0, {request_id: '0', block_ids: [4]}),
    stepEnd(0, [{request_id: '0', start: 4, num_tokens: 2, phase: 'prefill'}]),
    event('step_begin', 1), emitted(1, '0', 7, 'a'), emitted(1, '0', 8, 'b'),
    stepEnd(1, [{request_id: '0', start: 6, num_tokens: 1, phase: 'decode'}])];
  assert.deepEqual(entries(run(prefill, [])).map(entryLine), [
    'prefill: request 0 arrived: 6 prompt tokens, max_tokens 1',
    'prefill: block 2 allocated (block 2 evicted from the prefix cache)',
    'prefill: block 4 shared from the prefix cache',
    'prefill: step 0: prefill 2 tokens at positions 4–5, forward 1.0 ms',
    'prefill: step 1: decode 1 token at position 6, forward 1.0 ms, first token 7 "a", 8 "b" sampled',
  ]);
});

test('a failed load: the decode server computes the prompt itself', () => {
  const decode = [engineStarted(), arrived(0, '0', PROMPT, {max_tokens: 3}),
    kv(0, 'load', 0, 0, 0, {ok: false, reason: 'no answer from tcp://127.0.0.1:5555 in 5 s'}),
    event('step_begin', 0), allocated(0, '0', [0, 1]), scheduled(0, '0', 0), emitted(0, '0', 7, ' sea'),
    stepEnd(0, [{request_id: '0', start: 0, num_tokens: 6, phase: 'prefill'}])];
  const data = run(ZMQ_PREFILL.slice(0, 8), decode,
    {decode: {events: decode, stats: stats(6, 6, 1)}});
  assert.deepEqual(entries(data).slice(6).map(entryLine), [
    'decode: K/V load failed (no answer from tcp://127.0.0.1:5555 in 5 s): this server computes the prompt itself',
    'decode: blocks 0, 1 allocated',
    'decode: scheduled with 0 tokens already computed',
    'decode: step 0: prefill 6 tokens at positions 0–5, forward 1.0 ms, token 7 " sea" sampled',
  ]);
  assert.equal(movedLine(data), 'K/V moved: none (the load failed: no answer from tcp://127.0.0.1:5555 in 5 s); '
    + 'the decode server computed the prompt itself');
  assert.equal(sideLine(data, 'decode'),
    'decode server: 6 of 6 prompt tokens computed, 6 tokens in 1 step; 8 of 8 blocks free at the end');
  assert.deepEqual(counters(data).find(([what]) => what.startsWith('K/V loaded')),
    ['K/V loaded by the decode server', 'none: the load failed', 'no answer from tcp://127.0.0.1:5555 in 5 s']);
});

test('the totals: computed prompt tokens, the bytes moved, the same tokens', () => {
  assert.equal(headerLine(ZMQ), 'ZmqConnector: 6 prompt tokens, max_tokens 3; blocks of 4 tokens, float32, '
    + '256 KV bytes per token');
  assert.equal(sideLine(ZMQ, 'prefill'),
    'prefill server: 6 of 6 prompt tokens computed, 6 tokens in 1 step; 8 of 8 blocks free at the end');
  assert.equal(sideLine(ZMQ, 'decode'),
    'decode server: 0 of 6 prompt tokens computed, 2 tokens in 2 steps; 8 of 8 blocks free at the end');
  assert.equal(movedLine(ZMQ), 'K/V moved: 6 tokens × 256 bytes per token = 1,536 bytes (1.50 KiB), as the '
    + 'load measured; measured time: send 0.13 ms, load 2.50 ms');
  assert.equal(movedLine(STORAGE), 'K/V moved: 6 tokens × 256 bytes per token = 1,536 bytes (1.50 KiB), as the '
    + 'load measured; measured time: save 10.50 ms, load 2.50 ms');
  const short = run(ZMQ_PREFILL, [...DECODE.slice(0, 3), kv(0, 'load', 6, 1024, 0.001), ...DECODE.slice(4)]);
  assert.match(movedLine(short), /= 1,536 bytes \(1\.50 KiB\), but the load measured 1,024 bytes \(1\.00 KiB\);/);
  assert.equal(tokensLine(ZMQ), "tokens: 7, 8, 9; a single engine's: identical");
  assert.equal(tokensLine(run(ZMQ_PREFILL, DECODE, {single: {token_ids: [7, 8, 1], identical: false}})),
    "tokens: 7, 8, 9; a single engine's differ: 7, 8, 1");
  const lines = readoutLines(ZMQ);
  assert.equal(lines.length, 1 + entries(ZMQ).length + 4);
  assert.equal(lines[0], headerLine(ZMQ));
  assert.equal(lines.at(-1), tokensLine(ZMQ));
});

test('the counters say how each number is known', () => {
  assert.equal(perTokenFormula(engineStarted()),
    '2 × 2 layers × 2 KV heads × 8 head dim × 4 bytes (float32) = 256 bytes per token');
  const rows = counters(ZMQ);
  assert.deepEqual(rows.map(([what]) => what), [
    'Prompt tokens the prefill server computed', 'Prompt tokens the decode server computed',
    'K/V bytes per token', 'K/V the prompt takes', 'K/V sent by the prefill server',
    'K/V loaded by the decode server', 'Prefill server forward time', 'Decode server forward time',
    'Same tokens as a single engine']);
  assert.deepEqual(rows[1], ['Prompt tokens the decode server computed', '0 of 6', 'measured: its engine counter']);
  assert.deepEqual(rows[4], ['K/V sent by the prefill server', '1,536 bytes (1.50 KiB) in 0.13 ms',
                             'measured: its kv_transferred event']);
  assert.deepEqual(rows[7], ['Decode server forward time', '5.8 ms in 2 steps (2.9 ms a step)',
                             'measured: step_end forward_ms']);
  assert.equal(counters(STORAGE)[4][0], 'K/V saved by the prefill server');
  for (const [, , how] of rows) assert.match(how, /^(measured|computed|compared): /);
});

test('the request body from the form, and what it refuses', () => {
  assert.deepEqual(disaggBody({prompt: 'Hi there', maxTokens: 12, connector: 'ZmqConnector', blockSize: 16}),
    {prompt: 'Hi there', max_tokens: 12, connector: 'ZmqConnector', block_size: 16});
  assert.throws(() => disaggBody({prompt: '  ', maxTokens: 12, connector: 'ZmqConnector', blockSize: 16}),
    /write a prompt first/);
  assert.throws(() => disaggBody({prompt: 'x', maxTokens: 1, connector: 'ZmqConnector', blockSize: 16}),
    /from 2 to 64/);
  assert.throws(() => disaggBody({prompt: 'x', maxTokens: NaN, connector: 'ZmqConnector', blockSize: 16}),
    /from 2 to 64/);
  assert.throws(() => disaggBody({prompt: 'x', maxTokens: 4, connector: 'ZmqConnector', blockSize: 65}),
    /block size must be a whole number from 4 to 64/);
  assert.throws(() => disaggBody({prompt: 'x', maxTokens: 4, connector: 'Nixl', blockSize: 16}),
    /unknown connector Nixl/);
});
