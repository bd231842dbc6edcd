// The fragmentation lesson's figures: each step's slot counts under the paged scheme
// and under two contiguous ones, per step and summed over the run, and the readout's
// lines. No DOM here.

import {poolSummary} from '../state.js';
import {pct} from '../format.js';

const FIELDS = ['allocated_slots', 'filled_slots', 'reserved_max_model_len',
                'reserved_own_length', 'tokens_held'];

// The share of `reserved` slots that hold no token.
export const waste = (reserved, used) => (reserved ? 1 - used / reserved : 0);

// The three schemes on one measurement: [name, verb, slots set aside, slots holding tokens].
export function schemes(f, engine) {
  return [
    ['paged', 'allocated', f.allocated_slots, f.filled_slots],
    [`contiguous, max_model_len (${engine.max_model_len}) each`, 'reserved',
     f.reserved_max_model_len, f.tokens_held],
    ['contiguous, prompt + max_tokens each', 'reserved', f.reserved_own_length, f.tokens_held],
  ];
}

// Every step's measurement added up: slot-steps over the run so far.
export function runTotals(steps) {
  const sum = Object.fromEntries(FIELDS.map((k) => [k, 0]));
  for (const s of steps) for (const k of FIELDS) sum[k] += s.fragmentation[k];
  return sum;
}

export function lineOf([name, verb, set, used]) {
  return `${name}: ${set} slots ${verb}, ${used} hold tokens, ${pct(waste(set, used))} unused`;
}

export function readoutLines(state, timeline) {
  const lines = [`event ${timeline.pos} of ${timeline.length}`];
  const last = state.steps[state.steps.length - 1];
  if (!last) return [...lines, 'no step has ended yet'];
  lines.push(`after step ${last.step} (${last.num_running} running, ${last.num_waiting} waiting):`);
  schemes(last.fragmentation, state.engine).forEach((row) => lines.push(`  ${lineOf(row)}`));
  lines.push(`  external waste, paged: none by construction (any of the ${poolSummary(state).freeCount} `
    + 'free blocks can extend any request); contiguous: not simulated');
  lines.push(`run so far (slot-steps, steps ${state.steps[0].step}–${last.step}):`);
  schemes(runTotals(state.steps), state.engine).forEach((row) => lines.push(`  ${lineOf(row)}`));
  return lines;
}
