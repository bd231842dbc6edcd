// What a prefix-caching run says about the second request's prompt, block by block:
// whether the lookup found the block, which physical block holds it, and the hash each
// request gave it. No DOM here.

import {fold, poolSummary} from '../state.js';

export const SECOND = '1';  // the lab names the requests "0" and "1"; "1" is the one that hits

export const short = (hash) => hash.slice(0, 12);

// Request `rid`'s hash per logical block, from its blocks_cached events.
export function cachedHashes(events, rid) {
  const out = new Map();
  for (const e of events) {
    if (e.kind === 'blocks_cached' && e.request_id === rid) {
      e.hashes.forEach((hash, j) => out.set(e.first_index + j, {hash, block: e.block_ids[j], step: e.step}));
    }
  }
  return out;
}

// The second request's prompt blocks: {index, tokens, full, hit, physical, hash, hash0,
// cachedStep}, with its lookup, the block size and its prompt length.
export function prefixChain(events) {
  const arrived = events.find((e) => e.kind === 'request_arrived' && e.request_id === SECOND);
  const lookup = events.find((e) => e.kind === 'prefix_cache_lookup' && e.request_id === SECOND);
  const freedAt = events.findIndex((e) => e.kind === 'blocks_freed' && e.request_id === SECOND);
  const table = fold(events, freedAt < 0 ? events.length : freedAt).tables[SECOND] ?? [];
  const ids = arrived.prompt_token_ids;
  const bs = events[0].block_size;
  const first = cachedHashes(events, '0');
  const second = cachedHashes(events, SECOND);
  const blocks = [];
  for (let i = 0; i * bs < ids.length; i++) {
    const tokens = ids.slice(i * bs, (i + 1) * bs);
    const hit = i < lookup.block_ids.length;
    blocks.push({
      index: i, tokens, full: tokens.length === bs, hit,
      physical: table[i],
      hash: hit ? lookup.hashes[i] : second.get(i)?.hash ?? null,
      hash0: first.get(i)?.hash ?? null,
      cachedStep: second.get(i)?.step ?? null,
    });
  }
  return {lookup, blocks, bs, numTokens: ids.length};
}

export function resultOf(b) {
  if (b.hit) return `hit: shares physical block ${b.physical}`;
  if (!b.full) return `partial (${b.tokens.length} tokens): never hashed, computed into block ${b.physical}`;
  if (b.hash) return `miss: computed into block ${b.physical}, then cached`;
  return `miss: computed into block ${b.physical}`;
}

// Where the page opens: the engine right after the step that admitted the second request.
export function openingStop(timeline) {
  const admitted = timeline.events.findIndex((e) => e.kind === 'prefix_cache_lookup' && e.request_id === SECOND);
  return timeline.stops.find((s) => s > admitted) ?? timeline.length;
}

export function readoutLines(chain, state, timeline) {
  const {lookup, blocks} = chain;
  const full = blocks.filter((b) => b.full).length;
  const s = poolSummary(state);
  return [
    `request 1 prompt: ${chain.numTokens} tokens, ${full} full blocks of ${chain.bs}`,
    `lookup at admission (step ${lookup.step}): ${lookup.hit_tokens} of ${lookup.queried_tokens} tokens hit`,
    `hit tokens: ${lookup.hit_tokens}`,
    `hit blocks: ${lookup.block_ids.length ? lookup.block_ids.join(', ') : 'none'}`,
    'chain:',
    ...blocks.map((b) => `  block ${b.index}: ${b.hash ? short(b.hash) : 'no hash'} ${resultOf(b)}`),
    `step ${timeline.lastEvent ? state.step : 0}, event ${timeline.pos} of ${timeline.length}: `
      + `${s.cached} cached evictable, ${s.used + s.shared} held (${s.shared} shared), ${s.free} free`,
  ];
}
