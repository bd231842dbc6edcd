// What a beam-search run says at a position: the beams forked and pruned at this step
// with the blocks pruning gave back, which pruned beams had ended into the finished
// list, the texts of the tree's nodes, and the readout's lines. No DOM here.
//
// `texts` is a Map from token id to its text (filled in as the server detokenizes).

import {poolSummary, liveBeams, endedInto} from '../state.js';
import {plural} from '../format.js';

export const GROUP = '0';  // the lab names its one prompt's request "0": the beam search's id

export const fixed2 = (x) => (x === null || x === undefined ? '—' : x.toFixed(2));

export const textOf = (texts, ids) => ids.map((id) => (texts.has(id) ? texts.get(id) : `[${id}]`)).join('');

// Every token the search produced: those its beams added and those of its finished answers.
export function beamTokens(events) {
  const wanted = new Set();
  for (const e of events) {
    if (e.kind !== 'beam_step') continue;
    for (const b of e.beams) wanted.add(b.token_id);
    for (const f of e.finished) for (const id of f.token_ids) wanted.add(id);
  }
  return wanted;
}

// Whether pruned beam `rid` was retired because its candidate ended (and was kept among
// the finished answers) rather than beaten: the beam step of the step it left says so.
export function ended(state, rid) {
  const req = state.requests[rid];
  const record = (state.beamSearches[GROUP] ?? []).find((r) => r.step === req.finishedStep);
  return endedInto(record, req.outputTokenIds);
}

const prunedName = (state, rid) => (ended(state, rid) ? `${rid} (ended: joined the finished list)` : rid);

export const prunedSoFar = (state) => state.order.filter((id) => state.requests[id].finishReason === 'pruned');

// What happened in the current step so far: forks, and prunes with the blocks they let
// go; `back` are those of them no other beam holds, so back in the free pool.
export function thisStep(state, timeline) {
  const {events, pos} = timeline;
  const forked = [];
  const pruned = [];
  for (let i = 0; i < pos; i++) {
    const e = events[i];
    if (e.step !== state.step) continue;
    if (e.kind === 'sequence_forked') forked.push(e);
    if (e.kind === 'request_finished' && e.reason === 'pruned') {
      let freed = null;
      for (let j = i - 1; j >= 0 && !freed; j--) {
        if (events[j].kind === 'blocks_freed' && events[j].request_id === e.request_id) freed = events[j];
      }
      pruned.push({id: e.request_id, released: freed ? freed.block_ids : []});
    }
  }
  const back = [];
  for (const p of pruned) {
    for (const id of p.released) if (state.blocks[id].ref === 0 && !back.includes(id)) back.push(id);
  }
  return {forked, pruned, back};
}

// -- the tree's texts --------------------------------------------------------------------

// A node's token, short enough for its box.
export function nodeLabel(texts, token) {
  if (!texts.has(token)) return `#${token}`;
  const t = texts.get(token).replace(/\n/g, '⏎');
  return t.length > 11 ? `${t.slice(0, 10)}…` : t;
}

// What the tree shows, in words (its accessible name).
export function treeSummary(columns, live, pruned) {
  return columns.length
    ? `Beam tree after ${plural(columns.length, 'beam step')}: ${live.length
      ? `live beams, best first: ${live.map((b) => b.id).join(', ')}` : 'no beam is running'}; `
      + `${plural(pruned.length, 'beam')} pruned so far.`
    : 'No beam step yet: the prompt is being computed.';
}

// Node `n` of column `i` (see beamColumns in state.js), in words.
export function nodeTitle(texts, i, n) {
  let what = n.children === 0 ? ', pruned at the next step'
    : n.children > 1 ? `, continued by ${n.children} beams` : '';
  if (n.ended) what += '; its candidate at the next step ended and joined the finished list';
  return `step ${i}: beam ${n.id}${n.forked ? ' (forked)' : ''} added `
    + `${JSON.stringify(texts.get(n.token) ?? `#${n.token}`)}, score ${fixed2(n.score)}${what}`;
}

// -- the readout -------------------------------------------------------------------------

export function finishedLines(texts, record) {
  if (!record?.finished.length) return ['finished: none yet'];
  return ['finished, best first:', ...record.finished.map((f, i) => `  ${i + 1}. score `
    + `${fixed2(f.score)}, ${f.finish_reason}, ${JSON.stringify(textOf(texts, f.token_ids))}`)];
}

// `run`: {width, lengthPenalty, completions}, what was asked and the API's final beams.
export function readoutLines(run, texts, state, timeline) {
  const records = state.beamSearches[GROUP] ?? [];
  const record = records[records.length - 1];
  const step = thisStep(state, timeline);
  const live = liveBeams(state, GROUP);
  const pruned = prunedSoFar(state);
  const lines = [
    `step ${timeline.lastEvent ? state.step : 0}, event ${timeline.pos} of ${timeline.length}`,
    `beam width ${run.width}, length penalty ${run.lengthPenalty}; beam steps so far: ${records.length}`,
  ];
  if (live.length) {
    lines.push('live beams, best first:');
    for (const b of live) {
      lines.push(`  ${b.id}: score ${fixed2(b.score)}, blocks [${(state.tables[b.id] ?? []).join(', ')}], `
        + `${JSON.stringify(textOf(texts, state.requests[b.id].outputTokenIds))}`);
    }
  } else {
    lines.push('live beams: none');
  }
  lines.push(`forked at this step: ${step.forked.length
    ? step.forked.map((e) => `${e.request_id} from ${e.parent_id}`).join(', ') : 'none'}`);
  lines.push(`pruned at this step: ${step.pruned.length
    ? step.pruned.map((p) => prunedName(state, p.id)).join(', ') : 'none'}`);
  for (const p of step.pruned) {
    const back = p.released.filter((id) => step.back.includes(id));
    lines.push(`  ${p.id} let go of blocks ${p.released.join(', ')}; back in the free pool: `
      + `${back.length ? back.join(', ') : 'none'}`);
  }
  lines.push(`freed by pruning at this step: ${step.back.length ? step.back.join(', ') : 'none'}`);
  lines.push(`beams pruned so far: ${pruned.length
    ? pruned.map((id) => (ended(state, id) ? `${id} (ended)` : id)).join(', ') : 'none'}`);
  lines.push(...finishedLines(texts, record));
  const p = poolSummary(state);
  lines.push(`free blocks: ${p.freeCount} of ${p.total}`);
  if (record?.done) {
    lines.push('final beams, best first (the API\'s output):');
    run.completions.forEach((c, i) => lines.push(`  ${i + 1}. log-probability `
      + `${fixed2(c.cumulative_logprob)}, ${c.finish_reason}, ${JSON.stringify(c.text)}`));
  }
  return lines;
}

// Where the page opens: right after the step of the first pruning (or the first step).
export function openingStop(timeline) {
  const firstPrune = timeline.events.findIndex((e) => e.kind === 'request_finished' && e.reason === 'pruned');
  return firstPrune < 0 ? timeline.stops[0] ?? timeline.length
    : timeline.stops.find((s) => s > firstPrune) ?? timeline.length;
}

// Pool size for a run: the prompt and, per beam, its own blocks and a copy being made.
export function poolBlocks(promptTokens, blockSize, maxTokens, beams) {
  const room = Math.ceil(promptTokens / blockSize) + beams * (Math.ceil(maxTokens / blockSize) + 2) + 4;
  return Number.isFinite(room) ? Math.max(8, Math.min(512, room)) : 64;
}
