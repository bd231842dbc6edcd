// Small hand-built engine events for the page-logic tests (tests/js/*.test.mjs): each
// builder fills the fields the scope reads, so a test names only what it is about.

export function engineStarted(fields = {}) {
  return {kind: 'engine_started', step: 0, time: 0, model: 'tiny', num_layers: 2, num_heads: 4,
          num_kv_heads: 2, head_dim: 8, dtype: 'float32', kv_bytes_per_token: 256, block_size: 4,
          num_blocks: 8, num_swap_slots: 0, max_model_len: 64, max_num_seqs: 4,
          max_num_batched_tokens: 64, enable_prefix_caching: false, preemption_mode: 'recompute',
          policy: 'fcfs', ...fields};
}

// event('blocks_allocated', 1, {request_id: '0', block_ids: [0]})
export function event(kind, step, fields = {}) {
  return {kind, step, time: step / 100, ...fields};
}

export function arrived(step, rid, promptTokenIds, fields = {}) {
  return event('request_arrived', step, {request_id: rid, prompt_token_ids: promptTokenIds,
                                         prompt: null, max_tokens: 8, priority: 0, ...fields});
}

export function allocated(step, rid, blockIds, evicted = []) {
  return event('blocks_allocated', step, {request_id: rid, block_ids: blockIds, evicted});
}

export function scheduled(step, rid, numComputed = 0, resumed = false) {
  return event('request_scheduled', step, {request_id: rid, num_computed_tokens: numComputed, resumed});
}

export function freed(step, rid, blockIds) {
  return event('blocks_freed', step, {request_id: rid, block_ids: blockIds});
}

export function emitted(step, rid, tokenId, text = '') {
  return event('token_emitted', step, {request_id: rid, token_id: tokenId, text, logprob: null});
}

export function finished(step, rid, numOutputTokens, reason = 'length') {
  return event('request_finished', step, {request_id: rid, reason, num_output_tokens: numOutputTokens});
}

// batch: [{request_id, start, num_tokens, phase}], the step's chunks
export function stepEnd(step, batch = [], fields = {}) {
  return event('step_end', step, {batch, num_tokens: batch.reduce((s, c) => s + c.num_tokens, 0),
                                  schedule_ms: 0, forward_ms: 1, sample_ms: 0, update_ms: 0,
                                  num_free_blocks: 0, num_running: batch.length, num_waiting: 0,
                                  num_swapped: 0, fragmentation: {}, ...fields});
}
