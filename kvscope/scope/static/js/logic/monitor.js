// The live monitor's figures: the headline counts and the readout's lines for the
// state at a position of the server's event stream. No DOM here.

import {poolSummary, hitRate, requestsByStatus} from '../state.js';
import {pct} from '../format.js';

export const READOUT_REQUESTS = 30;  // the readout lists only the latest requests

// [name, value] pairs for the stats panel.
export function monitorStats(state) {
  const s = poolSummary(state);
  const groups = requestsByStatus(state);
  return [
    ['step', String(state.step)],
    ['waiting', String(groups.waiting.length)],
    ['running', String(groups.running.length)],
    ['preempted / swapped', `${groups.preempted.length} / ${groups.swapped.length}`],
    ['finished', String(groups.finished.length + groups.aborted.length)],
    ['blocks held', `${s.used + s.shared} of ${s.total}`],
    ['prefix-cache hit rate', pct(hitRate(state))],
    ['preemptions', String(state.counters.preemptions)],
  ];
}

export function readoutLines(state, timeline) {
  const s = poolSummary(state);
  const c = state.counters;
  const generated = state.order.reduce((n, rid) => n + state.requests[rid].outputTokenIds.length, 0);
  const lines = [
    `step ${state.step}, event ${timeline.pos} of ${timeline.length}`,
    `pool: ${s.total} blocks: ${s.used} held by one request, ${s.shared} shared, `
      + `${s.cached} cached, ${s.free} free`,
    `prefix cache: ${c.hitTokens} of ${c.queriedTokens} tokens hit (${pct(hitRate(state))})`,
    `preemptions: ${c.preemptions}; tokens generated (requests shown): ${generated}`,
    `requests (latest ${READOUT_REQUESTS}):`,
  ];
  for (const rid of state.order.slice(-READOUT_REQUESTS)) {
    const r = state.requests[rid];
    const status = r.finishReason && r.status === 'finished' ? `finished (${r.finishReason})` : r.status;
    lines.push(`${rid}: ${status}, prompt ${r.promptTokenIds.length} tokens, `
      + `${r.outputTokenIds.length} generated`);
  }
  return lines;
}
