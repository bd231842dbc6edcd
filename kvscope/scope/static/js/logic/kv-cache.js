// The KV-cache lesson's figures: bytes per token from the model's shape, and, for a
// run, what each request keeps in the cache and the blocks that hold it. No DOM here.

import {int} from '../format.js';

// m: a model's sizes, as /scope/api/kv-sizes gives them
export function formulaText(m) {
  return `2 × ${m.num_layers} layers × ${m.num_kv_heads} KV heads × ${m.head_dim} head dim × `
    + `${m.dtype_bytes} bytes (${m.dtype}) = ${m.kv_bytes_per_token} bytes per token`;
}

// Request `rid` in the cache: tokens whose K/V are kept, the blocks holding them, and
// the most tokens it can reach (prompt + max_tokens).
export function requestCache(state, rid) {
  const req = state.requests[rid];
  const table = state.tables[rid];
  return {
    inCache: table ? req.numComputed : 0,  // a finished request's blocks are gone
    blocks: (table ?? []).length,
    total: req.promptTokenIds.length + (req.maxTokens ?? 0),
  };
}

// The growth chart in words: the bytes held after the latest step.
export function growthLabel(state) {
  const bpt = state.engine.kv_bytes_per_token;
  const last = state.steps[state.steps.length - 1];
  return last
    ? `After step ${last.step}: ${int(last.fragmentation.tokens_held * bpt)} bytes of keys and values `
      + `held for ${last.fragmentation.tokens_held} tokens, in blocks totalling `
      + `${int(last.fragmentation.allocated_slots * bpt)} bytes.`
    : 'No step has run yet.';
}

// `sizes`: the loaded model's sizes (null until the server said them).
export function readoutLines(sizes, state, timeline) {
  const bpt = state.engine.kv_bytes_per_token;
  const bs = state.engine.block_size;
  const lines = [];
  if (sizes) {
    const m = sizes.loaded;
    lines.push(`KV bytes per token: 2 × ${m.num_layers} × ${m.num_kv_heads} × ${m.head_dim} × `
      + `${m.dtype_bytes} = ${m.kv_bytes_per_token}`);
  }
  lines.push(`step ${timeline.lastEvent ? state.step : 0}, event ${timeline.pos} of ${timeline.length}`);
  for (const rid of state.order) {
    const req = state.requests[rid];
    const {inCache, blocks} = requestCache(state, rid);
    lines.push(`request ${rid} (${req.status}${req.status === 'finished' ? ', blocks returned to the pool' : ''}): ${inCache} tokens in cache × ${bpt} B = `
      + `${inCache * bpt} B (prompt ${req.promptTokenIds.length} tokens, `
      + `${req.outputTokenIds.length} generated)`);
    lines.push(`  blocks held: ${blocks} × ${bs} slots × ${bpt} B = ${blocks * bs * bpt} B`);
  }
  return lines;
}
