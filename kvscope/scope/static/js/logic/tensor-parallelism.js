// What a tensor-parallel run says: how each rank's slice of every weight, head and
// neuron is laid out, the partial sums of the watched layer against the all-reduced
// result, the KV blocks of each request, the time spent in collectives, and the
// readout's lines. No DOM here.

import {int, pct} from '../format.js';

// The row-parallel linears the workers watch, and what a check of their sums allows.
export const WATCHED = [
  {key: 'o_proj', title: 'o_proj: attention output → hidden', input: 'attention output'},
  {key: 'down_proj', title: 'down_proj: MLP neurons → hidden', input: 'MLP activations'},
];
export const TOLERANCE = 1e-4;
const LINEARS = ['qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj'];  // one layer's weights

// -- formatting (fixed decimals, so a readout is the same in every browser) ---------------

export const f4 = (x) => x.toFixed(4);
export const ms = (x, digits = 1) => `${x.toFixed(digits)} ms`;
export const shape = (dims) => dims.join('×');
// [start, stop) as "0–5", or "2" for one
export const span = ([start, stop]) => (stop - start === 1 ? `${start}` : `${start}–${stop - 1}`);
// "query heads 0–5" / "KV head 2"
export const counted = (noun, range) => `${noun}${range[1] - range[0] === 1 ? '' : 's'} ${span(range)}`;
// a sum of signed terms: "0.8759 + (-0.7191)"
export const terms = (texts) => texts.map((t, i) => (i && t.startsWith('-') ? `(${t})` : t)).join(' + ');

// -- what the run says -------------------------------------------------------------------

export function tensorRun(data) {
  const start = data.events[0];
  const order = [];
  const blocks = new Map();
  for (const e of data.events) {
    if (e.kind === 'request_arrived') {
      order.push(e.request_id);
      blocks.set(e.request_id, []);
    } else if (e.kind === 'blocks_allocated') {
      if (!blocks.has(e.request_id)) {
        order.push(e.request_id);
        blocks.set(e.request_id, []);
      }
      blocks.get(e.request_id).push(...e.block_ids);
    }
  }
  const steps = data.events.filter((e) => e.kind === 'step_end');
  // bytes of one KV element: the engine's bytes per token over its elements per token
  const elementBytes = start.kv_bytes_per_token / (2 * start.num_layers * start.num_kv_heads * start.head_dim);
  return {start, ranks: start.ranks, order, blocks, steps, elementBytes,
          watched: data.tensor_parallel ?? null, outputs: data.outputs};
}

// How many weights of one layer's four projections a rank holds.
export const weightsOf = (rank) => LINEARS.reduce((sum, name) => sum + rank.weights[name][0] * rank.weights[name][1], 0);

// Each rank's count of one layer's weights, and its share of them all.
export function weightShares(run) {
  const counts = run.ranks.map(weightsOf);
  const total = counts.reduce((a, b) => a + b, 0);
  return run.ranks.map((r, i) => ({rank: r.rank, count: counts[i], share: counts[i] / total}));
}

// For one watched linear: every rank's record, the sum of the partials, whether each
// dim's sum is the all-reduced value on every rank (`same`), and whether all are.
export function reduction(run, key) {
  const recs = run.watched.ranks.map((r) => r[key]);
  const dims = recs[0].partial.length;
  const sum = [];
  const same = [];
  for (let d = 0; d < dims; d++) {
    sum.push(recs.reduce((s, rec) => s + rec.partial[d], 0));
    same.push(recs.every((rec) => Math.abs(sum[d] - rec.reduced[d]) < TOLERANCE));
  }
  return {recs, sum, dims, same, agrees: same.every(Boolean)};
}

// The values and bytes of a rank's KV pool.
export function kvPoolSize(run, rank) {
  const elements = rank.kv_pool_shape.reduce((a, b) => a * b, 1);
  return {elements, bytes: elements * run.elementBytes};
}

// -- the readout ---------------------------------------------------------------------------

export function rankLines(run) {
  const lines = [];
  for (const r of run.ranks) {
    lines.push(`rank ${r.rank}: ${counted('query head', r.q_heads)}, ${counted('KV head', r.kv_heads)}, `
      + `${counted('MLP neuron', r.intermediate)}, vocabulary ids ${span(r.vocab)}`);
    lines.push(`  weights: ${Object.entries(r.weights).map(([name, dims]) => `${name} ${shape(dims)}`).join(', ')}`);
    lines.push(`  KV pool: ${shape(r.kv_pool_shape)}`);
  }
  lines.push(`per layer: ${weightShares(run).map((w, i) => `rank ${w.rank} holds ${int(w.count)}`
    + `${i ? '' : ' weights'} (${pct(w.share)})`).join(', ')}`);
  return lines;
}

export function watchedLines(run) {
  const w = run.watched;
  if (!w) return ['no layer was watched'];
  const lines = [`layer ${w.layer}, step ${w.step} (the batch's last token row):`];
  let agree = true;
  for (const {key} of WATCHED) {
    const {recs, sum, agrees} = reduction(run, key);
    agree = agree && agrees;
    lines.push(`  ${key}: ${recs.map((rec) => rec.input_columns).join(' + ')} input columns; dim 0: `
      + `${terms(recs.map((rec) => f4(rec.partial[0])))} = ${f4(sum[0])} (all-reduced ${f4(recs[0].reduced[0])})`);
  }
  const dims = reduction(run, WATCHED[0].key).dims;
  lines.push(agree
    ? `  all ${dims} dims of both: the partials add up to the all-reduced vector within 1e-4, on every rank`
    : `  MISMATCH: in some of the ${dims} dims the partials do not add up to the all-reduced vector`);
  for (const {key} of WATCHED) {
    const recs = w.ranks.map((r) => r[key]);
    lines.push(`  ${key} time: ${recs.map((rec, i) => `rank ${i} matmul ${ms(rec.matmul_ms, 3)}, `
      + `all-reduce ${ms(rec.all_reduce_ms, 3)}`).join('; ')}`);
  }
  return lines;
}

export function kvLines(run) {
  const where = run.ranks.map((r) => `${counted('KV head', r.kv_heads)} on rank ${r.rank}`).join(', ');
  const lines = [`KV blocks (each block on every rank: ${where}):`];
  for (const rid of run.order) {
    const ids = run.blocks.get(rid);
    lines.push(`  request ${rid}: ${ids.length ? `blocks ${ids.join(', ')}` : 'no blocks'}`);
  }
  return lines;
}

export function timingLine(run) {
  const counts = run.steps.map((s) => s.num_collectives);
  const low = Math.min(...counts);
  const high = Math.max(...counts);
  const coll = run.steps.reduce((s, e) => s + e.collective_ms, 0);
  const fwd = run.steps.reduce((s, e) => s + e.forward_ms, 0);
  return `collectives: ${low === high ? low : `${low}–${high}`} per step, ${run.steps.length} steps; `
    + `rank 0 spent ${ms(coll)} in them of ${ms(fwd)} forward (${pct(coll / fwd)})`;
}

export function readoutText(run) {
  const s = run.start;
  return [
    `tensor_parallel_size ${s.tensor_parallel_size} (split: ${run.ranks[0].split}): ${s.num_heads} query heads `
      + `and ${s.num_kv_heads} KV heads of dim ${s.head_dim}, ${s.num_layers} layers`,
    ...rankLines(run), ...watchedLines(run), ...kvLines(run), timingLine(run),
  ].join('\n');
}

// The parts of a weight along its split dimension, in the order of the full matrix:
// {rank, size, label}. Fused weights (q/k/v, gate/up) put each rank's piece of every part.
export function weightParts(run, name) {
  const {ranks} = run;
  const hd = run.start.head_dim;
  const size = ([a, b]) => b - a;
  switch (name) {
    case 'qkv_proj':
      return [
        ...ranks.map((r) => ({rank: r.rank, size: size(r.q_heads) * hd, label: `q ${span(r.q_heads)}`})),
        ...ranks.map((r) => ({rank: r.rank, size: size(r.kv_heads) * hd, label: `k ${span(r.kv_heads)}`})),
        ...ranks.map((r) => ({rank: r.rank, size: size(r.kv_heads) * hd, label: `v ${span(r.kv_heads)}`})),
      ];
    case 'o_proj':
      return ranks.map((r) => ({rank: r.rank, size: size(r.q_heads) * hd, label: `heads ${span(r.q_heads)}`}));
    case 'gate_up_proj':
      return [
        ...ranks.map((r) => ({rank: r.rank, size: size(r.intermediate), label: `gate ${span(r.intermediate)}`})),
        ...ranks.map((r) => ({rank: r.rank, size: size(r.intermediate), label: `up ${span(r.intermediate)}`})),
      ];
    case 'down_proj':
      return ranks.map((r) => ({rank: r.rank, size: size(r.intermediate), label: `neurons ${span(r.intermediate)}`}));
    default:  // embed_tokens, lm_head: by vocabulary
      return ranks.map((r) => ({rank: r.rank, size: size(r.vocab), label: `ids ${span(r.vocab)}`}));
  }
}

export const WEIGHT_INFO = {
  qkv_proj: {kind: 'column-parallel', axis: 0, what: 'fused q | k | v, split by head'},
  o_proj: {kind: 'row-parallel', axis: 1, what: 'split by the heads its input comes from'},
  gate_up_proj: {kind: 'column-parallel', axis: 0, what: 'fused gate | up, split by neuron'},
  down_proj: {kind: 'row-parallel', axis: 1, what: 'split by the neurons its input comes from'},
  embed_tokens: {kind: 'vocabulary-parallel', axis: 0, what: 'split by token id; one all-reduce'},
  lm_head: {kind: 'vocabulary-parallel', axis: 0, what: 'split by token id; logits gathered'},
};

// How to draw weight `name`: its kind and split axis (`info`), each rank's shape
// (`local`), the full matrix's (`full`), what the split runs along, and the parts to draw.
export function weightLayout(run, name) {
  const info = WEIGHT_INFO[name] ?? {kind: 'split', axis: 0, what: ''};
  const parts = weightParts(run, name);
  const local = run.ranks.map((r) => r.weights[name]);
  // the full matrix: the split dimension summed over the ranks, the other one shared
  const full = [...local[0]];
  full[info.axis] = local.reduce((s, dims) => s + dims[info.axis], 0);
  const along = info.axis === 0 ? 'output rows' : 'input columns';
  // the parts must add up to the shapes the workers reported; if not, draw one per rank
  const drawn = run.ranks.every((r) => parts.filter((p) => p.rank === r.rank)
    .reduce((s, p) => s + p.size, 0) === r.weights[name][info.axis])
    ? parts : run.ranks.map((r) => ({rank: r.rank, size: r.weights[name][info.axis], label: `rank ${r.rank}`}));
  return {info, local, full, along, drawn};
}
