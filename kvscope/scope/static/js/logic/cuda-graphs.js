// The CUDA graphs lesson's logic: the lab body, the per-step bars of both runs (the
// Python layer loop and the decode stack), the table of medians, and the readout. Every
// number comes from the server's response (measured on this machine, or, for the GPU,
// computed there from the counted launches and stated assumptions). No DOM here.

export const MODES = ['loop', 'stack'];
export const MODE_NAMES = {loop: 'Python layer loop', stack: 'Decode stack (one call)'};
// the parts of a step, in the order the engine runs them; `other` is the rest of the
// wall time (events, bookkeeping around the parts the engine times)
export const PARTS = [
  ['schedule_ms', 'schedule'], ['prepare_ms', 'prepare'], ['forward_ms', 'forward'],
  ['sample_update_ms', 'sample + update'], ['other_ms', 'other'],
];
export const LIMITS = {batchSize: [1, 8], steps: [8, 64]};

export const ms = (x) => x.toFixed(2);
export const us = (x) => x.toFixed(1);
export const pct = (x) => `${(100 * x).toFixed(1)}%`;

function clamp(value, [lo, hi], fallback) {
  const n = Math.round(Number(value));
  return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : fallback;
}

export function launchBody({batchSize, steps}) {
  return {batch_size: clamp(batchSize, LIMITS.batchSize, 4), steps: clamp(steps, LIMITS.steps, 32)};
}

// A step's parts with `other` filled in (never below zero).
export function stepParts(step) {
  const known = step.schedule_ms + step.prepare_ms + step.forward_ms + step.sample_update_ms;
  return {...step, other_ms: Math.max(0, step.wall_ms - known)};
}

// The decode-only steps of both runs as bars: each segment's share of the widest step.
export function stepBars(run) {
  const decodes = (mode) => run[mode].steps.filter((s) => s.decode_only).map(stepParts);
  const all = MODES.flatMap(decodes);
  const widest = Math.max(...all.map((s) => s.wall_ms), 1e-9);
  return MODES.map((mode) => ({
    mode, name: MODE_NAMES[mode],
    bars: decodes(mode).map((s) => ({
      step: s.step, wall: s.wall_ms, calls: s.kernel_calls,
      label: `step ${s.step}: ${ms(s.wall_ms)} ms, ${s.kernel_calls} kernel calls`,
      segments: PARTS.map(([key, name]) => ({key, name, ms: s[key], share: s[key] / widest})),
    })),
  }));
}

// Rows of the table: [what, loop, stack], from the medians of the decode steps.
export function tableRows(run) {
  const m = (mode) => run[mode].median;
  const other = (mode) => Math.max(0, m(mode).wall_ms - m(mode).schedule_ms - m(mode).prepare_ms
    - m(mode).forward_ms - m(mode).sample_update_ms);
  return [
    ['decode steps', String(run.loop.num_decode_steps), String(run.stack.num_decode_steps)],
    ['median wall time (ms)', ms(m('loop').wall_ms), ms(m('stack').wall_ms)],
    ['  schedule (ms)', ms(m('loop').schedule_ms), ms(m('stack').schedule_ms)],
    ['  prepare (ms)', ms(m('loop').prepare_ms), ms(m('stack').prepare_ms)],
    ['  forward (ms)', ms(m('loop').forward_ms), ms(m('stack').forward_ms)],
    ['  sample + update (ms)', ms(m('loop').sample_update_ms), ms(m('stack').sample_update_ms)],
    ['  other (ms)', ms(other('loop')), ms(other('stack'))],
    ['kernel calls from Python per step', String(m('loop').kernel_calls), String(m('stack').kernel_calls)],
  ];
}

export function readoutLines(run) {
  const lm = run.loop.median;
  const sm = run.stack.median;
  const g = run.projection;
  const change = run.removed_ms >= 0
    ? `removed ${ms(run.removed_ms)} ms, ${pct(run.removed_share)} of the loop's step`
    : `added ${ms(-run.removed_ms)} ms (${pct(-run.removed_share)}): on this run the saving is within the noise`;
  return [
    `Batch ${run.batch_size}, ${run.steps} tokens each, ${run.num_layers} layers; both runs took ${run.loop.num_steps} steps `
      + `(${run.loop.num_decode_steps} of decodes only).`,
    `Python layer loop (measured): median decode step ${ms(lm.wall_ms)} ms: schedule ${ms(lm.schedule_ms)}, `
      + `prepare ${ms(lm.prepare_ms)}, forward ${ms(lm.forward_ms)}, sample + update ${ms(lm.sample_update_ms)} ms; `
      + `${lm.kernel_calls} kernel calls from Python per step (${run.calls_per_layer} per layer).`,
    `Decode stack (measured): median decode step ${ms(sm.wall_ms)} ms: schedule ${ms(sm.schedule_ms)}, `
      + `prepare ${ms(sm.prepare_ms)}, forward ${ms(sm.forward_ms)}, sample + update ${ms(sm.sample_update_ms)} ms; `
      + `${sm.kernel_calls} kernel calls per step (${run.stack.stack_runs} stack calls in the run).`,
    `Measured on this machine: the stack ${change}.`,
    `Same greedy tokens both ways: ${run.same_tokens ? 'yes' : 'NO'}.`,
    `Computed, not measured (${g.gpu}): ${g.eager_launches} launches × ${g.launch_us} µs = ${us(g.eager_launch_us)} µs `
      + `of launching per eager step against ${us(g.roofline_us)} µs of memory traffic at the roofline; `
      + `a graph replay (${g.graph_launches} launches) would take the step from ${us(g.eager_step_us)} µs to `
      + `${us(g.graph_step_us)} µs, removing ${pct(g.removed_share)} of it.`,
  ];
}
