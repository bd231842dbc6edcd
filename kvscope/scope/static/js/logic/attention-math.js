// The attention-math lesson's steps over one /scope/api/lab/attention result: one step
// per logical block (its scores), then the softmax over all scores, then the weighted
// sum of values; and the readout's lines at each step. No DOM here.

export const list = (xs) => xs.map(String).join(', ');

// Block steps, then softmax, then the weighted sum.
export const phaseCount = (data) => data.blocks.length + 2;

export function phaseName(data, p) {
  const n = data.blocks.length;
  if (p < n) return `block ${p + 1} of ${n}`;
  if (p === n) return `softmax over all ${data.weights.length} scores`;
  return 'weighted sum of values';
}

function phaseLines(data, phase) {
  const n = data.blocks.length;
  if (phase < n) {
    const b = data.blocks[phase];
    return [`logical block ${b.index} → physical block ${b.block_id}, positions ${b.start}–${b.end - 1}`,
      `scores: ${list(b.scores)}`,
      `block max: ${b.block_max}`,
      `block sum exp: ${b.block_sum_exp}`,
      `running max: ${b.running_max}, running sum exp: ${b.running_sum_exp}`];
  }
  if (phase === n) {
    const last = data.blocks[n - 1];
    return [`max over blocks: ${last.running_max}`, `sum of exp: ${last.running_sum_exp}`,
      `weights: ${list(data.weights)}`];
  }
  return [`output block-wise (first 8): ${list(data.output_blockwise.slice(0, 8))}`,
    `output contiguous (first 8): ${list(data.output_contiguous.slice(0, 8))}`,
    `max abs diff, block-wise vs contiguous: ${data.max_abs_diff}`,
    `max abs diff, online vs block-wise: ${data.max_abs_diff_online}`];
}

export function readoutLines(data, phase) {
  return [
    `prompt: ${data.tokens.length} tokens; query position ${data.position} `
      + `(${JSON.stringify(data.tokens[data.position])}), layer ${data.layer}, head ${data.head} `
      + `(KV head ${data.kv_head}), head dim ${data.head_dim}, scale ${data.scale}`,
    `block size ${data.block_size}, block table [${list(data.block_table)}]`,
    `phase: ${phaseName(data, phase)}`,
    ...phaseLines(data, phase),
  ];
}

// What the form says the loaded model allows (`engine` as /scope/api/info gives it).
export function limitsText(engine) {
  const heads = engine.num_heads ?? null;
  return `The loaded model has ${engine.num_layers} layers (0–${engine.num_layers - 1})`
    + (heads ? `, ${heads} query heads (0–${heads - 1})` : '')
    + ` sharing ${engine.num_kv_heads} KV heads of dimension ${engine.head_dim}.`;
}
