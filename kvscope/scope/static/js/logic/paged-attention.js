// The paged-attention lesson's readout: the pool's free count and every request's block
// table at a position of the run. No DOM here.

import {poolSummary} from '../state.js';

export function readoutLines(state, timeline) {
  const s = poolSummary(state);
  const lines = [
    `step ${timeline.lastEvent ? state.step : 0}, event ${timeline.pos} of ${timeline.length}`,
    `block size: ${state.engine.block_size} tokens`,
    `free blocks: ${s.freeCount} of ${s.total}`,
  ];
  for (const rid of state.order) {
    const req = state.requests[rid];
    lines.push(`request ${rid} (${req.status}, ${req.numComputed} tokens computed): `
      + `[${(state.tables[rid] ?? []).join(', ')}]`);
  }
  return lines;
}

// Request i arrives at step i × stagger (no stagger given: all at once).
export function arrivalSteps(count, stagger) {
  return Array.from({length: count}, (_, i) => i * (Number.isFinite(stagger) ? stagger : 0));
}
