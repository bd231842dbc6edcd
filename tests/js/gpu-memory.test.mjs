import {test} from 'node:test';
import assert from 'node:assert/strict';
import {LLAMA_70B, numParameters, kvBytesPerToken, sizes, placement, placementLine, machineLines, H100_LEVELS}
  from '../../kvscope/scope/static/js/logic/gpu-memory.js';

test('Llama-3-70B from its published config: 70.55B parameters, 141 GB in bf16', () => {
  assert.equal(numParameters(LLAMA_70B), 70_553_706_496);
  assert.equal(kvBytesPerToken(LLAMA_70B), 327_680);
  const p = placement(LLAMA_70B, {context: 8192, batch: 1});
  assert.equal(p.weights, 141_107_412_992);
  assert.equal(p.weightsFit, false);
  assert.equal(p.gpus, 2);
  assert.match(placementLine('Llama-3-70B', p, {context: 8192, batch: 1}),
    /bf16 weights = 141\.1 GB; .* do not fit one 80 GB H100 → 2 GPUs by tensor parallelism/);
});

test('a long context and a big batch need more GPUs; a small model fits one', () => {
  assert.equal(placement(LLAMA_70B, {context: 131072, batch: 8}).gpus, 8);
  const small = {num_layers: 30, hidden_size: 576, intermediate_size: 1536, num_heads: 9, num_kv_heads: 3,
                 head_dim: 64, vocab_size: 49152, tie_word_embeddings: true};
  const p = placement(small, {context: 2048, batch: 4});
  assert.equal(p.gpus, 1);
  assert.equal(p.kv, 2 * 30 * 3 * 64 * 2 * 2048 * 4);
  assert.equal(p.activationLevel, 'Registers');
  assert.equal(sizes(small, {context: 1, batch: 1}).params, numParameters(small));
});

test('the levels are the published H100 ones, with HBM at 3.35 TB/s', () => {
  assert.deepEqual(H100_LEVELS.map((l) => l.key), ['registers', 'shared', 'l2', 'hbm', 'nvlink', 'host']);
  assert.equal(H100_LEVELS[3].bandwidth, 3350);
});

test('this machine\'s lines name its caches and the measured bandwidth', () => {
  const info = {cpu: 'AMD EPYC, 2 threads', memory_bytes: 8e9,
    caches: [{level: 1, type: 'Data', size_bytes: 49152}, {level: 3, type: 'Unified', size_bytes: 32 << 20}],
    model: {name: 'm', dtype: 'float32', weights: 'dense', loaded_weight_bytes: 64 << 20, kv_bytes_per_token: 100}};
  const lines = machineLines(info, {bandwidth_gbs: 20});
  assert.match(lines[0], /L1 data 48 KiB, L3 unified 32768 KiB/);
  assert.match(lines[1], /67\.1 MB, 2\.0× the largest cache/);
  assert.match(lines[2], /20 GB\/s, .* 3\.36 ms/);
});
