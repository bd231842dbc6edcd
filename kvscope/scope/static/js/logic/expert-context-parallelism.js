// The expert- and context-parallelism lesson's figures, as /scope/api/parallel-math
// computes them from published configs (nothing here is run or measured): the slider
// stops, each figure's text, the per-rank bars, the table rows and the readout. No DOM here.

import {int, bytes, pct} from '../format.js';

// slider stops: index -> value
export const BATCHES = Array.from({length: 15}, (_, i) => 2 ** i);  // 1 … 16,384 tokens
export const SEQ_LENS = Array.from({length: 9}, (_, i) => 4096 * 2 ** i);  // 4,096 … 1,048,576
export const CP_SIZES = [1, 2, 4, 8];

// 4096 -> "4k", 1048576 -> "1M"
export function shortTokens(n) {
  return n >= 2 ** 20 ? `${n / 2 ** 20}M` : n >= 1024 ? `${n / 1024}k` : `${n}`;
}

export const ranks = (n) => `${n} rank${n === 1 ? '' : 's'}`;
export const tokens = (n) => `${int(n)} token${n === 1 ? '' : 's'}`;

// FLOPs with a decimal prefix, e.g. "4.50 PFLOP"
export function flop(n) {
  const units = ['FLOP', 'kFLOP', 'MFLOP', 'GFLOP', 'TFLOP', 'PFLOP', 'EFLOP'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  return i === 0 ? `${int(v)} FLOP` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
}

// An expectation may be a fraction of a token: two decimals then.
const count = (v) => (Number.isInteger(v) ? int(v) : v.toFixed(2));

// A figure's value as text, by its unit.
export function valueText(f) {
  switch (f.unit) {
    case 'bytes': return f.value < 1024 ? `${int(f.value)} B` : `${int(f.value)} B (${bytes(f.value)})`;
    case 'flop': return flop(f.value);
    case 'fraction': return pct(f.value);
    case 'tokens': return count(f.value);
    default: return int(f.value);  // params, experts
  }
}

// The short form for a table cell or a bar.
export function shortText(f) {
  return f.unit === 'bytes' ? bytes(f.value) : valueText(f);
}

export const figureLine = (f) => `${f.label}: ${valueText(f)} = ${f.formula} [${f.source}]`;

export const byKey = (figures) => Object.fromEntries(figures.map((f) => [f.key, f]));

// The EP size nearest to `current` that splits the new model's experts: the largest
// one not above it (1 always does).
export function nearestEp(sizes, current) {
  return sizes.filter((e) => e <= current).pop() ?? sizes[0];
}

export const query = ({model, ep, batch, cp, seqLen}) =>
  `model=${encodeURIComponent(model)}&ep=${ep}&batch=${batch}&cp=${cp}&seq_len=${seqLen}`;

// -- expert parallelism -----------------------------------------------------------------

const expertSpan = ([start, stop]) => (stop - start === 1 ? `expert ${start}` : `experts ${start}–${stop - 1}`);

// One bar per rank: its experts and the replicated rest, as parts of one device's weights.
export function rankBars(ep) {
  const one = ep.one_device_bytes;
  return ep.ranks.map((r) => {
    const total = r.expert_bytes + r.dense_bytes;
    return {
      rank: r.rank,
      densePct: (100 * r.dense_bytes) / one,
      expertPct: (100 * r.expert_bytes) / one,
      label: `rank ${r.rank}: ${expertSpan(r.experts)}, ${bytes(r.expert_bytes)} of experts + `
        + `${bytes(r.dense_bytes)} replicated = ${bytes(total)} (${pct(total / one)} of ${bytes(one)} on one device)`,
    };
  });
}

export function a2aText(ep) {
  const f = byKey(ep.figures);
  return `All-to-all, all ranks together: ${bytes(f.all_to_all_bytes_per_layer.value)} per MoE layer per step, `
    + `${bytes(f.all_to_all_bytes_per_step.value)} per step over every layer; each expert expects `
    + `${count(f.tokens_per_expert.value)} tokens a step (computed, assuming uniform routing).`;
}

export function epHeader(data) {
  const ep = data.expert_parallel;
  const m = data.models.find((s) => s.key === ep.model);
  return `expert parallelism: ${ep.name}, ${m.num_experts} experts (top-${m.experts_per_token}) in each of `
    + `${m.num_layers} layers, over ${ranks(ep.ep)}, batch of ${tokens(ep.batch)} per step`;
}

// -- context parallelism ----------------------------------------------------------------

const modelName = (m) => `${m.name} (${m.loaded ? 'the loaded model, ' : ''}${m.dtype})`;

export const CP_COLUMNS = ['KV per token', 'KV, whole sequence', 'KV per rank', 'K/V received per rank',
  'attention FLOPs per rank', 'busiest rank, contiguous'];
const CP_KEYS = ['kv_bytes_per_token', 'kv_bytes_sequence', 'kv_bytes_per_rank',
  'ring_bytes_received_per_rank', 'attention_flops_per_rank', 'attention_flops_busiest_contiguous'];

export function cpRows(cp) {
  return cp.models.map((m) => {
    const f = byKey(m.figures);
    return {name: modelName(m), loaded: m.loaded, cells: CP_KEYS.map((k) => shortText(f[k]))};
  });
}

// One bar per model: its KV per rank (dark) within its whole sequence's KV (light), both
// to the scale of the largest whole-sequence KV.
export function cpBars(cp) {
  const all = cp.models.map((m) => byKey(m.figures));
  const most = Math.max(...all.map((f) => f.kv_bytes_sequence.value));
  return cp.models.map((m, i) => {
    const f = all[i];
    return {
      name: m.name,
      rankPct: (100 * f.kv_bytes_per_rank.value) / most,
      wholePct: (100 * f.kv_bytes_sequence.value) / most,
      label: `${m.name}: ${bytes(f.kv_bytes_per_rank.value)} of KV per rank, of ${bytes(f.kv_bytes_sequence.value)} `
        + `for the whole sequence`,
    };
  });
}

export const cpHeader = (cp) => `context parallelism: one sequence of ${tokens(cp.seq_len)} over ${ranks(cp.cp)}`;

// -- the readout -------------------------------------------------------------------------

export function readoutLines(data) {
  const ep = data.expert_parallel;
  const cp = data.context_parallel;
  return [
    data.note,
    epHeader(data),
    ...ep.figures.map((f) => `  ${figureLine(f)}`),
    ...rankBars(ep).map((b) => `  ${b.label}`),
    cpHeader(cp),
    ...cp.models.flatMap((m) => [`  ${modelName(m)}:`, ...m.figures.map((f) => `    ${figureLine(f)}`)]),
  ];
}
