// The scope's state, folded from engine events: state = fold(events).
//
// No DOM code lives here, so the same fold follows a live engine over Server-Sent
// Events, replays a recorded JSONL file, and runs under node in the test suite
// (tests/js/fold.mjs), where the state after every event is compared with the
// engine's own bookkeeping. `applyEvent` updates a state that `fold` created and
// owns; `fold` itself is pure: the same events always give the same state.

export function emptyState() {
  return {
    engine: null,        // the engine_started record: model shape, pool size, options
    step: 0,             // the step the latest event belongs to
    time: 0,             // seconds since the engine started
    blocks: [],          // per physical block id: {ref, hash} (hash set while cached)
    tables: {},          // request id -> its block table (physical ids, logical order)
    swapped: {},         // request id -> swap slots holding its K/V
    requests: {},        // request id -> its life so far (see newRequest)
    order: [],           // request ids in order of arrival
    steps: [],           // one record per finished step: batch and timings
    counters: {queriedTokens: 0, hitTokens: 0, preemptions: 0, swapOuts: 0, swapIns: 0,
               evictions: 0, copiesOnWrite: 0, draftTokens: 0, acceptedTokens: 0},
    lastLookup: null,    // the latest prefix_cache_lookup event
    beamSearches: {},    // group request id -> its beam_step records, in order
    events: 0,           // how many events were folded
  };
}

export function fold(events, upTo = events.length) {
  const state = emptyState();
  for (let i = 0; i < upTo; i++) applyEvent(state, events[i]);
  return state;
}

function newRequest(id) {
  return {id, status: 'waiting', promptTokenIds: [], prompt: null, maxTokens: null,
          priority: 0, outputTokenIds: [], text: '', logprobs: [], numComputed: 0,
          cachedTokens: 0, preemptions: 0, arrivedStep: 0, finishedStep: null,
          finishReason: null, draftTokens: 0, acceptedTokens: 0, verifications: []};
}

function request(state, id) {
  if (!state.requests[id]) {  // joined mid-run without a snapshot: make a stub
    state.requests[id] = newRequest(id);
    state.order.push(id);
  }
  return state.requests[id];
}

function block(state, id) {
  while (state.blocks.length <= id) state.blocks.push({ref: 0, hash: null});
  return state.blocks[id];
}

const HANDLERS = {
  engine_started(state, e) {
    state.engine = e;
    state.blocks = Array.from({length: e.num_blocks}, () => ({ref: 0, hash: null}));
  },
  snapshot(state, e) {
    Object.assign(state, emptyState(), {step: e.step, time: e.time});
    state.engine = e.engine;
    state.blocks = e.blocks.map(([ref, hash]) => ({ref, hash}));
    state.tables = structuredClone(e.tables);
    state.swapped = structuredClone(e.swapped);
    for (const r of e.requests) {
      const req = request(state, r.request_id);
      Object.assign(req, {status: r.status, promptTokenIds: r.prompt_token_ids,
                          outputTokenIds: [...r.output_token_ids], priority: r.priority,
                          numComputed: r.num_computed_tokens});
    }
    const c = e.counters;
    Object.assign(state.counters, {queriedTokens: c.prefix_cache_queries,
                                   hitTokens: c.prefix_cache_hits,
                                   preemptions: c.num_preemptions, evictions: c.num_evictions});
  },
  request_arrived(state, e) {
    const req = request(state, e.request_id);
    Object.assign(req, {status: 'waiting', promptTokenIds: e.prompt_token_ids, prompt: e.prompt,
                        maxTokens: e.max_tokens, priority: e.priority, arrivedStep: e.step});
  },
  request_scheduled(state, e) {
    const req = request(state, e.request_id);
    req.status = 'running';
    req.numComputed = e.num_computed_tokens;
  },
  request_finished(state, e) {
    const req = request(state, e.request_id);
    Object.assign(req, {status: 'finished', finishReason: e.reason, finishedStep: e.step});
    delete state.swapped[e.request_id];  // a finished request's swap slots are given back
  },
  request_aborted(state, e) {
    const req = request(state, e.request_id);
    Object.assign(req, {status: 'aborted', finishReason: 'abort', finishedStep: e.step});
    delete state.swapped[e.request_id];
  },
  step_begin() {},
  step_end(state, e) {
    const {kind, ...step} = e;
    state.steps.push(step);
    for (const chunk of e.batch) {
      const req = state.requests[chunk.request_id];
      if (!req) continue;
      // of a chunk's draft tokens, only the accepted ones count as computed
      const drafts = chunk.num_draft_tokens ?? 0;
      const last = req.verifications.at(-1);
      const accepted = drafts && last?.step === e.step ? last.numAccepted : 0;
      req.numComputed = chunk.start + chunk.num_tokens - drafts + accepted;
    }
  },
  blocks_allocated(state, e) {
    for (const id of e.evicted) {
      block(state, id).hash = null;
      state.counters.evictions += 1;
    }
    const table = (state.tables[e.request_id] ??= []);
    for (const id of e.block_ids) {
      block(state, id).ref = 1;
      table.push(id);
    }
  },
  blocks_shared(state, e) {
    const table = (state.tables[e.request_id] ??= []);
    for (const id of e.block_ids) {
      block(state, id).ref += 1;
      table.push(id);
    }
  },
  blocks_trimmed(state, e) {
    for (const id of e.block_ids) block(state, id).ref -= 1;
    state.tables[e.request_id].splice(-e.block_ids.length);
  },
  drafts_verified(state, e) {
    const req = request(state, e.request_id);
    req.draftTokens += e.draft_token_ids.length;
    req.acceptedTokens += e.num_accepted;
    req.verifications.push({step: e.step, draftTokenIds: e.draft_token_ids,
                            numAccepted: e.num_accepted, tokenIds: e.token_ids});
    state.counters.draftTokens += e.draft_token_ids.length;
    state.counters.acceptedTokens += e.num_accepted;
  },
  blocks_freed(state, e) {
    for (const id of e.block_ids) block(state, id).ref -= 1;
    delete state.tables[e.request_id];
  },
  blocks_cached(state, e) {
    e.block_ids.forEach((id, i) => { block(state, id).hash = e.hashes[i]; });
  },
  cache_reset(state) {
    for (const b of state.blocks) b.hash = null;
  },
  copy_on_write(state, e) {
    for (const id of e.evicted ?? []) {
      block(state, id).hash = null;
      state.counters.evictions += 1;
    }
    const table = state.tables[e.request_id] ?? [];
    const at = table.indexOf(e.src_block_id);
    if (at >= 0) table[at] = e.dst_block_id;
    block(state, e.src_block_id).ref -= 1;
    block(state, e.dst_block_id).ref = 1;
    state.counters.copiesOnWrite += 1;
  },
  sequence_forked(state, e) {
    const parent = state.requests[e.parent_id];
    const req = request(state, e.request_id);
    Object.assign(req, {status: 'running', parentId: e.parent_id,
                        promptTokenIds: parent ? parent.promptTokenIds : [],
                        outputTokenIds: parent ? [...parent.outputTokenIds] : [],
                        prompt: parent ? parent.prompt : null,
                        maxTokens: parent ? parent.maxTokens : null,
                        numComputed: e.num_computed_tokens, arrivedStep: e.step});
    state.tables[e.request_id] = [...e.block_ids];
    for (const id of e.block_ids) block(state, id).ref += 1;
  },
  beam_step(state, e) {
    // the beams that go on get their new token; the group keeps its history
    for (const beam of e.beams) request(state, beam.request_id).outputTokenIds.push(beam.token_id);
    (state.beamSearches[e.request_id] ??= []).push(
      {step: e.step, beams: e.beams, finished: e.finished, done: e.done});
  },
  prefix_cache_lookup(state, e) {
    state.counters.queriedTokens += e.queried_tokens;
    state.counters.hitTokens += e.hit_tokens;
    request(state, e.request_id).cachedTokens = e.hit_tokens;
    state.lastLookup = e;
  },
  preempted(state, e) {
    const req = request(state, e.request_id);
    req.preemptions += 1;
    state.counters.preemptions += 1;
    req.status = e.mode === 'swap' ? 'swapped' : 'preempted';
    if (e.mode !== 'swap') req.numComputed = 0;
  },
  swapped_out(state, e) {
    state.swapped[e.request_id] = e.copies.map(([, slot]) => slot);
    state.counters.swapOuts += 1;
  },
  swapped_in(state, e) {
    delete state.swapped[e.request_id];
    state.counters.swapIns += 1;
  },
  token_emitted(state, e) {
    const req = request(state, e.request_id);
    req.outputTokenIds.push(e.token_id);
    req.text += e.text;
    req.logprobs.push(e.logprob);
  },
};

export function applyEvent(state, event) {
  const handler = HANDLERS[event.kind];
  if (!handler) throw new Error(`unknown event kind: ${event.kind}`);
  if (event.kind !== 'snapshot') {
    state.step = event.step;
    state.time = event.time;
  }
  handler(state, event);
  state.events += 1;
  return state;
}

export const EVENT_KINDS = Object.keys(HANDLERS);

// -- derived views (still no DOM) --------------------------------------------------

// 'free' (holds nothing), 'cached' (refcount 0 but findable by hash: evictable),
// 'used' (one table holds it), 'shared' (several do).
export function blockKind(b) {
  if (b.ref > 1) return 'shared';
  if (b.ref === 1) return 'used';
  return b.hash ? 'cached' : 'free';
}

export function owners(state) {
  const out = state.blocks.map(() => []);
  for (const [rid, table] of Object.entries(state.tables)) {
    for (const id of table) out[id]?.push(rid);
  }
  return out;
}

export function poolSummary(state) {
  const counts = {free: 0, cached: 0, used: 0, shared: 0};
  for (const b of state.blocks) counts[blockKind(b)] += 1;
  return {...counts, total: state.blocks.length, freeCount: counts.free + counts.cached};
}

export function hitRate(state) {
  const {queriedTokens, hitTokens} = state.counters;
  return queriedTokens ? hitTokens / queriedTokens : 0;
}

export function requestsByStatus(state) {
  const out = {waiting: [], running: [], preempted: [], swapped: [], finished: [], aborted: []};
  for (const id of state.order) out[state.requests[id].status]?.push(id);
  return out;
}

// Sharing at a glance: blocks held by anyone, the sum of every block table's length
// (what the same tables would hold if no block were shared), and the shared blocks as
// [id, refcount] pairs.
export function sharing(state) {
  let held = 0;
  const shared = [];
  state.blocks.forEach((b, id) => {
    if (b.ref > 0) held += 1;
    if (b.ref > 1) shared.push([id, b.ref]);
  });
  let referenced = 0;
  for (const table of Object.values(state.tables)) referenced += table.length;
  return {held, referenced, shared};
}

// The running beams of a beam search, best first by the group's latest beam step, each
// with the score that step gave it (null for a beam forked after it). `group` is the
// request id of the search, the root every beam was forked from.
export function liveBeams(state, group) {
  const records = state.beamSearches[group] ?? [];
  const latest = records.length ? records[records.length - 1].beams : [];
  const rank = new Map(latest.map((b, i) => [b.request_id, i]));
  const scores = new Map();
  for (const record of records) for (const b of record.beams) scores.set(b.request_id, b.score);
  const rootOf = (id) => {
    let req = state.requests[id];
    while (req?.parentId !== undefined && state.requests[req.parentId]) req = state.requests[req.parentId];
    return req?.id;
  };
  const live = state.order.filter((id) => state.requests[id].status === 'running' && rootOf(id) === group);
  const at = new Map(live.map((id, i) => [id, rank.has(id) ? rank.get(id) : latest.length + i]));
  return live.sort((a, b) => at.get(a) - at.get(b)).map((id) => ({id, score: scores.get(id) ?? null}));
}

// Whether `tokens` plus one more token is among a beam step's finished answers: the
// beam's last candidate ended (end of sequence or the length limit) and was kept.
export function endedInto(record, tokens) {
  return Boolean(record) && record.finished.some((f) => f.token_ids.length === tokens.length + 1
    && tokens.every((t, k) => f.token_ids[k] === t));
}

// A beam search as columns, one per beam step: node j of column i is the j-th best
// beam after step i, with the tokens it has generated, the index of its parent in
// column i - 1 (-1: the prompt), whether it is a new sequence, how many beams of the
// next step continue it (null: no next step yet, or the search ended), and whether
// its candidate at the next step ended and joined the finished answers.
export function beamColumns(records) {
  const columns = [];
  for (const record of records) {
    if (!record.beams.length) break;  // only the last record (the search is done) has none
    const prev = columns[columns.length - 1] ?? null;
    columns.push(record.beams.map((b) => {
      const parent = prev ? prev.findIndex((p) => p.id === b.parent_id) : -1;
      return {id: b.request_id, token: b.token_id, score: b.score, parent,
              tokens: [...(parent >= 0 ? prev[parent].tokens : []), b.token_id],
              forked: b.request_id !== b.parent_id};
    }));
  }
  columns.forEach((column, i) => {
    const next = records[i + 1];
    for (const node of column) {
      node.children = next?.beams.length ? next.beams.filter((c) => c.parent_id === node.id).length : null;
      node.ended = endedInto(next, node.tokens);
    }
  });
  return columns;
}
