// What a preemption run says at a position: the latest victim, what left the pool with
// it and how it came back, the log of preemptions and swaps, and the readout. No DOM.

import {requestsByStatus} from '../state.js';

const RELEVANT = new Set(['preempted', 'swapped_out', 'swapped_in']);

// The latest preemption at or before `pos`, what left with it and how it came back.
export function latestVictim(events, pos) {
  let at = -1;
  for (let i = pos - 1; i >= 0; i--) {
    if (events[i].kind === 'preempted') { at = i; break; }
  }
  if (at < 0) return null;
  const p = events[at];
  const rid = p.request_id;
  let out = null;
  for (let i = at - 1; i >= 0 && !out; i--) {
    const e = events[i];
    if (e.request_id !== rid) continue;
    if (e.kind === 'swapped_out' || e.kind === 'blocks_freed') out = e;
  }
  let back = null;
  for (let i = at + 1; i < pos && !back; i++) {
    const e = events[i];
    if (e.request_id !== rid) continue;
    if (e.kind === 'swapped_in' || (e.kind === 'request_scheduled' && e.resumed)) back = e;
  }
  return {rid, mode: p.mode, step: p.step, out, back};
}

// The victim's blocks to mark: those it holds again once back, else those it gave up.
export function victimBlocks(v, state) {
  if (!v) return new Set();
  if (v.back) return new Set(state.tables[v.rid] ?? []);
  if (v.out) return new Set(v.out.kind === 'swapped_out' ? v.out.copies.map(([b]) => b) : v.out.block_ids);
  return new Set();
}

// Preemptions and swaps among `seen`, and the blocks a recompute victim let go of just before.
export function preemptionLog(seen) {
  return seen.filter((e, i) => RELEVANT.has(e.kind) || (e.kind === 'blocks_freed'
    && seen[i + 1]?.kind === 'preempted' && seen[i + 1].request_id === e.request_id
    && seen[i + 1].mode === 'recompute'));
}

export function outText(v) {
  if (!v.out) return 'held no blocks';
  if (v.out.kind === 'swapped_out') {
    return `blocks copied to swap: ${v.out.copies.map(([b, s]) => `${b}→slot ${s}`).join(', ')}`;
  }
  return `blocks freed, K/V dropped: ${v.out.block_ids.join(', ')}`;
}

export function backText(v) {
  if (!v.back) return 'not yet';
  if (v.back.kind === 'swapped_in') {
    return `step ${v.back.step}, copied back: ${v.back.copies.map(([s, b]) => `slot ${s}→${b}`).join(', ')}`;
  }
  return `step ${v.back.step}, admitted again with ${v.back.num_computed_tokens} tokens computed: `
    + 'recomputes its prompt and generated tokens';
}

// Where the page opens: right after the step of the first preemption (or the first step).
export function openingStop(timeline) {
  const first = timeline.events.findIndex((e) => e.kind === 'preempted');
  return first < 0 ? timeline.stops[0] : timeline.stops.find((s) => s > first) ?? timeline.length;
}

export function readoutLines(state, timeline) {
  const v = latestVictim(timeline.events, timeline.pos);
  const c = state.counters;
  const lines = [
    `mode: ${state.engine.preemption_mode}`,
    `step ${timeline.lastEvent ? state.step : 0}, event ${timeline.pos} of ${timeline.length}`,
    `statuses: ${state.order.map((rid) => `${rid} ${state.requests[rid].status}`).join(', ')}`,
    `preemptions: ${c.preemptions} (swap outs ${c.swapOuts}, swap ins ${c.swapIns})`,
  ];
  if (v) {
    lines.push(`victim: request ${v.rid} (${v.mode}, step ${v.step})`);
    lines.push(`  out: ${outText(v)}`);
    lines.push(`  back: ${backText(v)}`);
  } else {
    lines.push('victim: none yet');
  }
  const waiting = requestsByStatus(state);
  lines.push(`free blocks: ${state.blocks.filter((b) => b.ref === 0).length} of ${state.blocks.length}`
    + `; swapped out: ${waiting.swapped.length ? waiting.swapped.join(', ') : 'none'}`);
  return lines;
}
