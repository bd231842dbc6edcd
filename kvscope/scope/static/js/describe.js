// One line of plain text per event, for the player and the event logs. No DOM here.

const ids = (list) => `[${list.join(', ')}]`;

export function describeEvent(e) {
  if (!e) return 'before the first event';
  const r = e.request_id !== undefined ? `request ${e.request_id}` : '';
  switch (e.kind) {
    case 'engine_started':
      return `engine started: ${e.num_blocks} blocks of ${e.block_size} tokens`;
    case 'snapshot':
      return `joined the running engine at step ${e.step}`;
    case 'request_arrived':
      return `${r} arrived: ${e.prompt_token_ids.length} prompt tokens`;
    case 'request_scheduled':
      return `${r} ${e.resumed ? 'resumed' : 'admitted'} with ${e.num_computed_tokens} tokens already computed`;
    case 'request_finished':
      if (e.reason === 'pruned') return `${r} pruned: no beam continues it`;
      return `${r} finished (${e.reason}) after ${e.num_output_tokens} tokens`;
    case 'request_aborted':
      return `${r} aborted`;
    case 'step_begin':
      return `step ${e.step} begins`;
    case 'step_end':
      return `step ${e.step} ended: ${e.num_tokens} tokens, forward ${e.forward_ms.toFixed(1)} ms`;
    case 'blocks_allocated':
      return `${r} got blocks ${ids(e.block_ids)}${e.evicted.length ? ` (evicted cached ${ids(e.evicted)})` : ''}`;
    case 'blocks_shared':
      return `${r} shares cached blocks ${ids(e.block_ids)}`;
    case 'blocks_freed':
      return `${r} let go of blocks ${ids(e.block_ids)}`;
    case 'blocks_cached':
      return `${r} cached blocks ${ids(e.block_ids)}`;
    case 'cache_reset':
      return `prefix cache reset (${e.num_blocks} blocks)`;
    case 'copy_on_write':
      return `${r} copied shared block ${e.src_block_id} into ${e.dst_block_id}`;
    case 'sequence_forked':
      return `${r} forked from request ${e.parent_id}, sharing blocks ${ids(e.block_ids)}`;
    case 'beam_step':
      return e.done
        ? `${r} beam search done: ${e.finished.length} finished beams`
        : `${r} beam step: ${e.beams.map((b) => (b.request_id === b.parent_id ? b.request_id
          : `${b.request_id} (from ${b.parent_id})`)).join(', ')} go on, ${e.finished.length} finished`;
    case 'prefix_cache_lookup':
      return `${r} prefix lookup: ${e.hit_tokens} of ${e.queried_tokens} tokens hit`;
    case 'preempted':
      return `${r} preempted (${e.mode}${e.fallback ? ', swap space full' : ''})`;
    case 'swapped_out':
      return `${r} swapped out: ${e.copies.map(([b, s]) => `${b}→slot ${s}`).join(', ')}`;
    case 'swapped_in':
      return `${r} swapped in: ${e.copies.map(([s, b]) => `slot ${s}→${b}`).join(', ')}`;
    case 'token_emitted':
      return `${r} emitted token ${e.token_id} ${JSON.stringify(e.text)}`;
    default:
      return e.kind;
  }
}
