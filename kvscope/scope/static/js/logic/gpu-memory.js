// The GPU memory lesson's data and logic. The H100 figures are NVIDIA's published
// specification (the H100 Tensor Core GPU datasheet for the SXM5 board and the Hopper
// architecture whitepaper), not measured here; the 70B shapes are Llama-3-70B's
// published config.json. Sizes are computed from them, and from the loaded model's own
// config (the server's /scope/api/machine-memory). No DOM here.

const KB = 1024;
const GB = 1e9;  // decimal, as GPU memory is sold and specified
export const H100_SOURCE = 'published specification, not measured: NVIDIA H100 SXM5 datasheet '
  + 'and Hopper architecture whitepaper';
export const H100_SMS = 132;
// smallest and fastest first; capacity in bytes (totals over the 132 SMs where per SM),
// bandwidth in GB/s where NVIDIA publishes one (null: no single published figure)
export const H100_LEVELS = [
  {key: 'registers', name: 'Registers', capacity: 256 * KB * H100_SMS, per: '256 KB per SM × 132 SMs',
   bandwidth: null, onChip: true},
  {key: 'shared', name: 'Shared memory / L1', capacity: 256 * KB * H100_SMS,
   per: '256 KB per SM (up to 228 KB as shared memory) × 132 SMs', bandwidth: null, onChip: true},
  {key: 'l2', name: 'L2 cache', capacity: 50 * 1024 * KB, per: '50 MB for the whole chip',
   bandwidth: null, onChip: true},
  {key: 'hbm', name: 'HBM3', capacity: 80 * GB, per: '80 GB on the package', bandwidth: 3350, onChip: false},
  {key: 'nvlink', name: 'Other GPUs over NVLink', capacity: null, per: 'NVLink 4, 900 GB/s in total',
   bandwidth: 900, onChip: false},
  {key: 'host', name: 'Host memory over PCIe', capacity: null, per: 'PCIe Gen5 x16, 128 GB/s both ways together',
   bandwidth: 128, onChip: false},
];
export const HBM = H100_LEVELS.find((l) => l.key === 'hbm');

// Llama-3-70B's published config.json (bf16)
export const LLAMA_70B = {name: 'Llama-3-70B', num_layers: 80, hidden_size: 8192, intermediate_size: 28672,
  num_heads: 64, num_kv_heads: 8, head_dim: 128, vocab_size: 128256, tie_word_embeddings: false,
  source: 'computed from its published config.json'};

// The same count as the engine's ModelArch.num_parameters.
export function numParameters(m) {
  const attn = m.hidden_size * m.num_heads * m.head_dim * 2 + m.hidden_size * m.num_kv_heads * m.head_dim * 2;
  const perLayer = attn + 3 * m.hidden_size * m.intermediate_size + 2 * m.hidden_size;
  const head = m.tie_word_embeddings ? 0 : m.vocab_size * m.hidden_size;
  return m.vocab_size * m.hidden_size + m.num_layers * perLayer + m.hidden_size + head;
}

export const kvBytesPerToken = (m, bytes = 2) => 2 * m.num_layers * m.num_kv_heads * m.head_dim * bytes;

export const gb = (n) => `${(n / GB).toFixed(n >= 10 * GB ? 1 : 3)} GB`;
export const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;

// Sizes in bf16 at a context length and batch: the weights, the KV cache, and one
// decoder layer's activations for a decode step (the residual stream and the MLP's
// widest tensor, gate and up together, per request).
export function sizes(m, {context, batch}) {
  const params = m.num_parameters ?? numParameters(m);
  return {
    params, weights: params * 2, kvPerToken: kvBytesPerToken(m), kv: kvBytesPerToken(m) * context * batch,
    activations: batch * (m.hidden_size + 2 * m.intermediate_size) * 2,
  };
}

// Where each would sit on H100s: the weights and the KV cache stay in HBM between steps
// (over as many GPUs, a power of two for tensor parallelism, as their total needs); one
// layer's activations fit in the smallest on-chip level that holds them.
export function placement(m, options) {
  const s = sizes(m, options);
  const total = s.weights + s.kv;
  let gpus = 1;
  while (gpus * HBM.capacity < total) gpus *= 2;
  const act = H100_LEVELS.find((l) => l.onChip && l.capacity >= s.activations) ?? HBM;
  return {...s, total, gpus, weightsFit: s.weights <= HBM.capacity, activationLevel: act.name,
          stepUs: total / gpus / (HBM.bandwidth * GB) * 1e6};
}

export function placementLine(name, p, {context, batch}) {
  const where = p.gpus === 1
    ? `fit one 80 GB H100 (${(100 * p.total / HBM.capacity).toFixed(1)}% of its HBM)`
    : `do not fit one 80 GB H100 → ${p.gpus} GPUs by tensor parallelism`;
  return `${name} (computed): ${(p.params / 1e9).toFixed(2)}B parameters, bf16 weights = ${gb(p.weights)}; `
    + `KV cache at ${context} tokens × ${batch} = ${gb(p.kv)} (${p.kvPerToken} bytes per token); `
    + `weights + KV = ${gb(p.total)}: ${where}. One layer's decode activations, ${mb(p.activations)}, `
    + `fit in the ${p.activationLevel}. Reading weights and KV once per decode step takes at least `
    + `${p.stepUs.toFixed(1)} µs at ${HBM.bandwidth} GB/s${p.gpus > 1 ? ` per GPU, split ${p.gpus} ways` : ''}.`;
}

// This machine: where the bundled model sits, from its caches and measured bandwidth.
export function machineLines(info, roof) {
  const caches = info.caches.map((c) => `L${c.level} ${c.type.toLowerCase()} ${c.size_bytes / KB} KiB`).join(', ');
  const largest = Math.max(0, ...info.caches.map((c) => c.size_bytes));
  const w = info.model.loaded_weight_bytes;
  const lines = [`This machine (read from Linux): ${info.cpu}; caches of cpu0: ${caches}; `
    + `main memory ${info.memory_bytes ? gb(info.memory_bytes) : 'unknown'}.`];
  lines.push(`${info.model.name} as loaded here (${info.model.dtype}, ${info.model.weights}): `
    + `the layers' and head's weights take ${mb(w)}, ${largest && w > largest ? `${(w / largest).toFixed(1)}× the largest cache, so they stream from main memory` : 'within the largest cache'}; `
    + `KV ${info.model.kv_bytes_per_token} bytes per token.`);
  if (roof) {
    lines.push(`Measured bandwidth here: ${roof.bandwidth_gbs} GB/s, so reading those weights once takes at `
      + `least ${(w / (roof.bandwidth_gbs * GB) * 1e3).toFixed(2)} ms per decode step; an H100's HBM `
      + `(published) would take ${(w / (HBM.bandwidth * GB) * 1e6).toFixed(1)} µs.`);
  }
  return lines;
}

export const CONTEXTS = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072];
