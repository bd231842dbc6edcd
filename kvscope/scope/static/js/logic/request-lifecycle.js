// The request lifecycle: one request followed through a run's events, one row per stage
// it met (arrival, prefix-cache lookup, block allocation, each step it ran in, a
// preemption and its return, the finish, the blocks given back), its block table after
// every step, and what it did at every step. The same code follows a request of a lab
// run or of the live server's stream (which starts with a snapshot). No DOM here.

import {applyEvent, emptyState} from '../state.js';
import {plural} from '../format.js';

// The lab workload. Request 0 arrives first with the shared opening; request 1 (the one
// followed) comes two steps later with the same opening and a repetitive tail. The
// opening's full blocks are cached by then (a prefix hit); a budget of 16 tokens a step
// splits its prompt into chunks; n-gram lookup drafts the repeated words (accepted); and
// 18 blocks of 4 tokens cannot hold both requests to the end, so the later one, request 1,
// is preempted once and comes back when request 0 has finished.
export const FOLLOWED = '1';
export const OPENING = 'You are a careful assistant who copies text exactly as it is given, '
  + 'with no changes at all. ';
export const FIRST_TAIL = 'Say hello to the reader.';
export const FOLLOWED_TAIL = 'Copy this: one two three four five six seven eight, '
  + 'one two three four five six seven eight, one two three four five six seven eight,';

export function lifecycleBody() {
  return {
    prompts: [OPENING + FIRST_TAIL, OPENING + FOLLOWED_TAIL],
    arrive_at_step: [0, 2],
    max_tokens_each: [24, 16],
    block_size: 4,
    num_blocks: 18,
    max_num_batched_tokens: 16,
    max_num_seqs: 8,
    enable_prefix_caching: true,
    preemption_mode: 'recompute',
    speculative_config: {method: 'ngram', num_speculative_tokens: 4},
  };
}

// The stages a request of the lab workload should meet, in the order the page names them.
export const STAGES = ['arrival', 'lookup', 'allocation', 'prefill', 'verify', 'preemption',
  'return', 'finish', 'freed'];
export const STAGE_NAMES = {
  arrival: 'arrival', waiting: 'waiting', lookup: 'prefix-cache lookup', allocation: 'block allocation',
  prefill: 'prefill chunk', decode: 'decode', verify: 'decode with drafts', preemption: 'preemption',
  return: 'return', finish: 'finish', freed: 'blocks returned',
};

// a time on the run's clock (seconds since the engine started)
export const at = (seconds) => `t = ${seconds.toFixed(3)} s`;
const ids = (list) => (list.length ? list.join(', ') : 'none');

function allocatedIn(list) {
  return list.filter((e) => e.kind === 'blocks_allocated').flatMap((e) => e.block_ids);
}

// Rows for request `rid`: {stage, step, time, kinds (the event kinds behind it), table
// (its block ids after it), text, ...values}; plus per step what it did (`strip`) and
// its table (`tables`), the engine's pool size, and the step count.
export function lifecycle(events, rid) {
  const state = emptyState();
  const rows = [];
  const strip = [];
  const tables = [];
  let pending = [];  // this request's block and draft events since its last row
  let freed = null;  // a blocks_freed waiting to learn whether it is a preemption or a finish
  let ended = null;  // the finish rows, placed after the step that ended the request
  let waitingSince = null;  // the step it started waiting (arrival or preemption)
  let waitedFrom = 0;  // and the time
  let lookup = null;  // the latest lookup: its hit blocks lead the table
  let admitted = false;
  const table = () => [...(state.tables[rid] ?? [])];
  const push = (row) => rows.push({kinds: [], table: table(), ...row});
  const waitRow = (e) => {
    if (waitingSince !== null && e.step > waitingSince) {
      const last = e.step - 1;
      push({stage: 'waiting', step: waitingSince, time: waitedFrom, to: last, steps: e.step - waitingSince,
            text: `waited in the queue from step ${waitingSince} to step ${last} (${plural(e.step - waitingSince, 'step')})`});
    }
    waitingSince = null;
  };
  for (const e of events) {
    applyEvent(state, e);
    if (e.kind === 'step_end') {
      const chunk = e.batch.find((c) => c.request_id === rid);
      const req = state.requests[rid];
      if (chunk) {
        push(stepRow(e, chunk, pending));
        pending = [];
      }
      strip.push({step: e.step, what: chunk ? chunkKind(chunk) : statusKind(req),
                  tokens: chunk ? chunk.num_tokens : 0,
                  accepted: chunk && rows.at(-1).stage === 'verify' ? rows.at(-1).accepted : 0});
      tables.push({step: e.step, table: table(), hits: lookup && req?.status === 'running' ? lookup.block_ids.length : 0});
      if (ended) {
        rows.push(...ended.map((row) => ({...row, freeAfter: e.num_free_blocks})));
        ended = null;
      }
      continue;
    }
    if (e.request_id !== rid) continue;
    switch (e.kind) {
      case 'request_arrived':
        waitingSince = e.step;
        waitedFrom = e.time;
        push({stage: 'arrival', step: e.step, time: e.time, kinds: [e.kind], promptTokens: e.prompt_token_ids.length,
              maxTokens: e.max_tokens,
              text: `arrived with ${plural(e.prompt_token_ids.length, 'prompt token')}, asking for at most ${e.max_tokens}`});
        break;
      case 'prefix_cache_lookup': {
        waitRow(e);
        lookup = e;
        const shared = pending.filter((p) => p.kind === 'blocks_shared').flatMap((p) => p.block_ids);
        push({stage: 'lookup', step: e.step, time: e.time, again: admitted,
              kinds: ['prefix_cache_lookup', ...(shared.length ? ['blocks_shared'] : [])],
              hitTokens: e.hit_tokens, queried: e.queried_tokens, hitBlocks: e.block_ids,
              table: [...e.block_ids],
              text: `${admitted ? 'back from preemption, looked up again: ' : ''}${e.hit_tokens} of `
                + `${plural(e.queried_tokens, 'token')} found in the prefix cache, `
                + `${e.block_ids.length ? `shared blocks ${ids(e.block_ids)}` : 'no block shared'}`});
        break;
      }
      case 'request_scheduled': {
        if (!lookup || lookup.step !== e.step) waitRow(e);
        const fresh = allocatedIn(pending);
        pending = pending.filter((p) => p.kind !== 'blocks_allocated' && p.kind !== 'blocks_shared');
        push({stage: e.resumed ? 'return' : 'allocation', step: e.step, time: e.time,
              kinds: [...(fresh.length ? ['blocks_allocated'] : []), 'request_scheduled'],
              newBlocks: fresh, computed: e.num_computed_tokens, resumed: e.resumed,
              text: `${e.resumed ? 'rejoined the running batch' : 'joined the running batch'} with `
                + `${plural(e.num_computed_tokens, 'token')} already computed; new blocks ${ids(fresh)}; `
                + `table of ${plural(table().length, 'block')}`});
        admitted = true;
        break;
      }
      case 'swapped_in':
        push({stage: 'return', step: e.step, time: e.time, kinds: [e.kind], newBlocks: e.copies.map(([, b]) => b),
              resumed: true, text: `swapped back in: ${e.copies.map(([s, b]) => `slot ${s} → block ${b}`).join(', ')}`});
        break;
      case 'blocks_freed':
        freed = e;
        break;
      case 'preempted': {
        const gone = freed ? freed.block_ids : [];
        push({stage: 'preemption', step: e.step, time: e.time,
              kinds: [...(freed ? ['blocks_freed'] : []), 'preempted'], mode: e.mode, freedBlocks: gone,
              text: `preempted (${e.mode}): the pool had no free block left and the scheduler chose it to give back `
                + `${plural(gone.length, 'block')}${e.mode === 'recompute' ? '; its tokens will be computed again' : ''}`});
        freed = null;
        pending = [];
        waitingSince = e.step;
        waitedFrom = e.time;
        break;
      }
      case 'swapped_out':
        rows.at(-1).text += `; copied out to swap slots ${e.copies.map(([, s]) => s).join(', ')}`;
        rows.at(-1).kinds.push(e.kind);
        break;
      case 'request_finished': {
        const gone = freed ? freed.block_ids : [];
        ended = [
          {stage: 'finish', step: e.step, time: e.time, kinds: [e.kind], table: [], reason: e.reason,
           outputTokens: e.num_output_tokens,
           text: `finished (${e.reason}) after ${plural(e.num_output_tokens, 'output token')}`},
          {stage: 'freed', step: e.step, time: e.time, kinds: freed ? ['blocks_freed'] : [], table: [],
           freedBlocks: gone, poolSize: state.engine?.num_blocks ?? 0,
           text: `gave back ${plural(gone.length, 'block')} (${ids(gone)})`},
        ];
        freed = null;
        break;
      }
      case 'request_aborted':
        ended = [{stage: 'finish', step: e.step, time: e.time, kinds: [e.kind], table: [], reason: 'abort',
                  outputTokens: state.requests[rid].outputTokenIds.length, text: 'aborted'}];
        break;
      default:
        pending.push(e);  // blocks allocated, shared, cached or trimmed; drafts verified; tokens
    }
  }
  if (ended) rows.push(...ended);
  for (const row of rows) {
    if (row.stage === 'freed' && row.freeAfter !== undefined) {
      row.text += `; the pool then had ${row.freeAfter} of ${row.poolSize} blocks free`;
    }
  }
  return {rid, rows, strip, tables, poolSize: state.engine?.num_blocks ?? 0,
          blockSize: state.engine?.block_size ?? 0, numSteps: strip.length};
}

function chunkKind(chunk) {
  if (chunk.phase === 'prefill') return 'prefill';
  return chunk.num_draft_tokens ? 'verify' : 'decode';
}

function statusKind(req) {
  if (!req) return 'absent';
  if (req.status === 'finished' || req.status === 'aborted') return 'done';
  if (req.status === 'preempted' || req.status === 'swapped') return 'preempted';
  return req.status === 'waiting' ? 'waiting' : 'idle';
}

function stepRow(e, chunk, pending) {
  const kind = chunkKind(chunk);
  const mine = pending;
  const verified = mine.find((p) => p.kind === 'drafts_verified');
  const emitted = mine.filter((p) => p.kind === 'token_emitted').length;
  const fresh = allocatedIn(mine);
  const trimmed = mine.filter((p) => p.kind === 'blocks_trimmed').flatMap((p) => p.block_ids);
  const kinds = ['step_end', ...new Set(mine.map((p) => p.kind))];
  const row = {stage: kind, step: e.step, time: e.time, kinds, tokens: chunk.num_tokens, start: chunk.start,
               newBlocks: fresh, trimmedBlocks: trimmed, emitted, stepTokens: e.num_tokens,
               batchSize: e.batch.length, forwardMs: e.forward_ms};
  const grew = fresh.length ? `; new blocks ${ids(fresh)}` : '';
  const cut = trimmed.length ? `; trimmed ${ids(trimmed)}` : '';
  const others = e.batch.length > 1 ? ` beside ${plural(e.batch.length - 1, 'other request')}` : '';
  if (kind === 'prefill') {
    row.text = `prefill chunk of ${plural(chunk.num_tokens, 'token')} (positions ${chunk.start}–`
      + `${chunk.start + chunk.num_tokens - 1})${others}${grew}`;
  } else if (kind === 'verify') {
    row.drafts = verified ? verified.draft_token_ids.length : chunk.num_draft_tokens;
    row.accepted = verified ? verified.num_accepted : 0;
    row.text = `decode with ${plural(row.drafts, 'draft')} proposed, ${row.accepted} accepted: `
      + `${plural(emitted, 'token')} out of one pass${others}${grew}${cut}`;
  } else {
    row.text = `decode: ${plural(emitted, 'token')} out${others}${grew}`;
  }
  return row;
}

// Which of the stages in `wanted` the rows have, and which they lack.
export function coverage(rows, wanted = STAGES) {
  const seen = new Set(rows.map((r) => r.stage));
  return {met: wanted.filter((s) => seen.has(s)), missing: wanted.filter((s) => !seen.has(s))};
}

// Totals over the rows: prefill chunks and their tokens, decode steps, drafts.
export function totals(rows) {
  const of = (stage) => rows.filter((r) => r.stage === stage);
  const verify = of('verify');
  return {
    prefillChunks: of('prefill').map((r) => r.tokens),
    decodes: of('decode').length,
    verifies: verify.length,
    drafts: verify.reduce((n, r) => n + r.drafts, 0),
    accepted: verify.reduce((n, r) => n + r.accepted, 0),
    preemptions: of('preemption').length,
    stepsRun: rows.filter((r) => ['prefill', 'decode', 'verify'].includes(r.stage)).length,
  };
}

export function rowLine(row) {
  return `${STAGE_NAMES[row.stage]}, step ${row.step}, ${at(row.time)}: ${row.text}`;
}

export function readoutLines(life, source = 'lab run') {
  const t = totals(life.rows);
  const {met, missing} = coverage(life.rows);
  return [
    `request ${life.rid} (${source}, ${plural(life.numSteps, 'engine step')}, pool of ${life.poolSize} blocks of ${life.blockSize} tokens)`,
    ...life.rows.map(rowLine),
    `prefill chunks: ${t.prefillChunks.length} (${t.prefillChunks.join(' + ') || '0'} tokens); `
      + `decode steps: ${t.decodes} plain, ${t.verifies} with drafts; drafts: ${t.drafts} proposed, ${t.accepted} accepted; `
      + `preemptions: ${t.preemptions}`,
    `stages met: ${met.map((s) => STAGE_NAMES[s]).join(', ') || 'none'}`
      + (missing.length ? `; not met in this run: ${missing.map((s) => STAGE_NAMES[s]).join(', ')}` : ''),
  ];
}

// The requests of a live stream a reader can follow: those whose arrival the stream
// showed (a request already running when the page joined has no arrival to show),
// newest first, with their status.
export function followable(events) {
  const state = emptyState();
  for (const e of events) applyEvent(state, e);
  const seen = events.filter((e) => e.kind === 'request_arrived').map((e) => e.request_id);
  return [...new Set(seen)].reverse().map((rid) => ({rid, status: state.requests[rid]?.status ?? 'waiting'}));
}

// What request `rid` did at each step, for the strip's label.
export function stripSummary(life) {
  const counts = {};
  for (const s of life.strip) counts[s.what] = (counts[s.what] ?? 0) + 1;
  const order = ['absent', 'waiting', 'prefill', 'decode', 'verify', 'idle', 'preempted', 'done'];
  return `Request ${life.rid} over ${plural(life.numSteps, 'step')}: `
    + order.filter((k) => counts[k]).map((k) => `${counts[k]} ${STRIP_NAMES[k]}`).join(', ') + '.';
}

export const STRIP_NAMES = {
  absent: 'before it arrived', waiting: 'waiting', prefill: 'prefill', decode: 'decode',
  verify: 'decode with drafts', idle: 'running but not scheduled', preempted: 'preempted, waiting',
  done: 'after it finished',
};
