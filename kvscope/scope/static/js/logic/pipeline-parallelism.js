// What a pipeline-parallel run says: which layers and weights each stage holds and
// the shape of its KV pool, when each stage computed each step's batch (from the
// step_end events' stage times, seconds on the run's clock), how many batches were in
// the pipeline, the bubble computed from those times, and the readout's lines. No DOM.

import {bytes, int, pct} from '../format.js';

// -- formatting (fixed decimals, so a readout is the same in every browser) ---------------

// a duration in seconds, as milliseconds
export const ms = (seconds, digits = 1) => `${(1000 * seconds).toFixed(digits)} ms`;
export const shape = (dims) => dims.join('×');
// [start, stop) as "0–14", or "3" for one
export const span = ([start, stop]) => (stop - start === 1 ? `${start}` : `${start}–${stop - 1}`);
export const inFlight = (n) => `${n} ${n === 1 ? 'batch' : 'batches'} in flight`;

// The request ids of a batch with their phases, consecutive ids of one phase together:
// "0, 1 (decode), 2 (prefill)".
export function batchText(batch) {
  if (!batch.length) return 'no requests';
  const groups = [];
  for (const chunk of batch) {
    const last = groups[groups.length - 1];
    if (last && last.phase === chunk.phase) last.ids.push(chunk.request_id);
    else groups.push({phase: chunk.phase, ids: [chunk.request_id]});
  }
  return groups.map((g) => `${g.ids.join(', ')} (${g.phase})`).join(', ');
}

// -- what the run says -------------------------------------------------------------------

// What a stage holds besides its decoder layers, from the weights its first rank reported.
export function extras(weights) {
  const parts = [];
  if (weights.embed_tokens) parts.push('embedding');
  if (weights.lm_head) parts.push('final norm and LM head');
  return parts;
}

export function pipelineRun(data) {
  const start = data.events.find((e) => e.kind === 'engine_started');
  const numStages = start.pipeline_parallel_size ?? 1;
  // bytes of one KV element: the engine's bytes per token over its elements per token
  const elementBytes = start.kv_bytes_per_token / (2 * start.num_layers * start.num_kv_heads * start.head_dim);
  const stages = [];
  for (let s = 0; s < numStages; s++) {
    const ranks = (start.ranks ?? []).filter((r) => r.stage === s);
    if (!ranks.length) continue;
    const first = ranks.find((r) => r.tp_rank === 0) ?? ranks[0];
    const elements = first.kv_pool_shape.reduce((a, b) => a * b, 1);
    stages.push({stage: s, ranks, layers: first.layers, weights: first.weights, extras: extras(first.weights),
                 kvPoolShape: first.kv_pool_shape, kvElements: elements, kvBytes: elements * elementBytes});
  }
  const steps = data.events.filter((e) => e.kind === 'step_end').map((e) => ({
    step: e.step,
    inFlight: e.batches_in_flight ?? 1,
    batch: e.batch,
    numTokens: e.num_tokens,
    times: [...(e.stages ?? [])].sort((a, b) => a.stage - b.stage)
      .map((t) => ({stage: t.stage, start: t.start, end: t.end})),
  }));
  const requests = data.events.filter((e) => e.kind === 'request_arrived').length;
  return {start, numStages, stages, steps, requests, elementBytes, outputs: data.outputs ?? []};
}

// Every stage interval of the run, step by step, stage by stage.
export const intervals = (run) => run.steps.flatMap((s) => s.times.map((t) => ({step: s.step, ...t})));

// How busy the stages were: the span from the first stage start to the last stage end,
// each stage's busy seconds and share of the span, the time at least two stages computed
// at once, and the bubble: 1 − Σ busy / (stages × span). Null for a run without times.
export function bubble(run) {
  const all = intervals(run);
  if (!all.length) return null;
  let first = Infinity;
  let last = -Infinity;
  const busy = Array.from({length: run.numStages}, () => 0);
  for (const t of all) {
    first = Math.min(first, t.start);
    last = Math.max(last, t.end);
    busy[t.stage] += t.end - t.start;
  }
  const spanS = last - first;
  const total = busy.reduce((a, b) => a + b, 0);
  // a sweep over the starts (+1) and ends (−1): where two or more stages were busy
  const marks = all.flatMap((t) => [[t.start, 1], [t.end, -1]]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let depth = 0;
  let previous = first;
  let together = 0;
  for (const [at, delta] of marks) {
    if (depth >= 2) together += at - previous;
    depth += delta;
    previous = at;
  }
  return {first, last, span: spanS, busy, total, together,
          share: busy.map((b) => (spanS ? b / spanS : 0)),
          fraction: spanS ? 1 - total / (run.numStages * spanS) : null};
}

// For step `index`: each of its stage intervals, with the other steps' intervals on
// other stages that ran during it, and for how long.
export function overlaps(run, index) {
  const step = run.steps[index];
  return step.times.map((t) => ({
    ...t,
    others: run.steps.flatMap((o) => (o === step ? [] : o.times
      .filter((u) => u.stage !== t.stage)
      .map((u) => ({step: o.step, stage: u.stage, seconds: Math.min(t.end, u.end) - Math.max(t.start, u.start)}))
      .filter((u) => u.seconds > 0))),
  }));
}

// Where the stepper starts: the first step that found the pipeline full.
export function firstFull(run) {
  const at = run.steps.findIndex((s) => s.inFlight >= run.numStages);
  return at < 0 ? 0 : at;
}

// -- the timeline's geometry ----------------------------------------------------------------

// The steps around `index` (radius on each side) and the time range their stages cover.
export function zoomWindow(run, index, radius = 2) {
  const lo = Math.max(0, index - radius);
  const hi = Math.min(run.steps.length - 1, index + radius);
  const times = run.steps.slice(lo, hi + 1).flatMap((s) => s.times);
  return {lo, hi, from: Math.min(...times.map((t) => t.start)), to: Math.max(...times.map((t) => t.end))};
}

// The bars of every stage interval that meets [from, to], clipped to it, as fractions
// of the range: {step, index, stage, left, width, start, end}.
export function bars(run, from, to) {
  const width = to - from;
  const out = [];
  run.steps.forEach((s, index) => {
    for (const t of s.times) {
      if (t.end <= from || t.start >= to) continue;
      const a = Math.max(t.start, from);
      const b = Math.min(t.end, to);
      out.push({step: s.step, index, stage: t.stage, start: t.start, end: t.end,
                left: width ? (a - from) / width : 0, width: width ? (b - a) / width : 1});
    }
  });
  return out;
}

// Tick marks for a time axis over [from, to] (seconds), every 1, 2 or 5 × 10^k ms after
// `origin`, the smallest such interval that cuts the range into at most `most` pieces:
// {at (fraction of the range), ms}.
export function ticks(from, to, origin, most = 5) {
  const rangeMs = 1000 * (to - from);
  if (!(rangeMs > 0)) return [];
  let stepMs = 1;
  for (const size of [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]) {
    stepMs = size;
    if (rangeMs / size <= most) break;
  }
  const out = [];
  const startMs = 1000 * (from - origin);
  for (let v = Math.ceil(startMs / stepMs) * stepMs; v <= startMs + rangeMs; v += stepMs) {
    out.push({at: (v - startMs) / rangeMs, ms: v});
  }
  return out;
}

// -- the readout ---------------------------------------------------------------------------

export function headerLine(run) {
  const perStage = run.stages.length ? run.stages[0].ranks.length : 0;
  return `pipeline_parallel_size ${run.numStages}: ${run.start.num_layers} layers over ${run.numStages} stages, `
    + `${perStage} worker process${perStage === 1 ? '' : 'es'} each; ${run.steps.length} steps, `
    + `${run.requests} requests`;
}

export function stageLine(stage) {
  const holds = stage.extras.length ? `, ${stage.extras.join(', ')}` : '';
  return `stage ${stage.stage}: layers ${span(stage.layers)}${holds}; KV pool ${shape(stage.kvPoolShape)} `
    + `(${bytes(stage.kvBytes)})`;
}

export function stepLine(step) {
  return `step ${step.step}: ${inFlight(step.inFlight)}, requests ${batchText(step.batch)}, `
    + step.times.map((t) => `stage ${t.stage} ${ms(t.end - t.start)}`).join(', ');
}

export function bubbleLines(run) {
  const b = bubble(run);
  if (!b) return ['no stage times: nothing to measure'];
  const full = run.steps.filter((s) => s.inFlight >= run.numStages).length;
  return [
    `steps with ${inFlight(run.numStages)}: ${full} of ${run.steps.length}`,
    `span ${ms(b.span)}, from the first stage start to the last stage end`,
    `busy (computed): ${b.busy.map((x, i) => `stage ${i} ${ms(x)} (${pct(b.share[i])} of the span)`).join(', ')}`,
    `two stages at once (computed): ${ms(b.together)} (${pct(b.together / b.span)} of the span)`,
    `bubble ${pct(b.fraction)} (computed: 1 − busy ${ms(b.total)} / (${run.numStages} stages × span ${ms(b.span)}))`,
  ];
}

// Times relative to the run's first stage start, as "754.2–809.8 ms".
export function rangeText(t, origin) {
  return `${(1000 * (t.start - origin)).toFixed(1)}–${(1000 * (t.end - origin)).toFixed(1)} ms`;
}

export function selectedLines(run, index) {
  const b = bubble(run);
  const origin = b ? b.first : 0;
  const step = run.steps[index];
  const lines = [`selected: step ${step.step} (${step.times.map((t) => `stage ${t.stage} ${rangeText(t, origin)}`)
    .join(', ')}, after the first stage start)`];
  for (const t of overlaps(run, index)) {
    lines.push(t.others.length
      ? `  while stage ${t.stage} computed it: ${t.others.map((o) => `stage ${o.stage} computed step ${o.step} `
        + `for ${ms(o.seconds)}`).join('; ')}`
      : `  while stage ${t.stage} computed it: no other stage computed`);
  }
  return lines;
}

export function readoutText(run, index) {
  const lines = [headerLine(run), ...run.stages.map(stageLine), ...run.steps.map(stepLine), ...bubbleLines(run)];
  if (run.steps.length) lines.push(...selectedLines(run, index));
  return lines.join('\n');
}

// The KV pool of a stage in words, for the page: "15 layers × K,V × 64 blocks × …".
export function poolWords(stage) {
  const [layers, kv, blocks, slots, heads, dims] = stage.kvPoolShape;
  return `${layers} layers × ${kv} (K, V) × ${blocks} blocks × ${slots} slots × ${heads} KV heads × ${dims} dims `
    + `= ${int(stage.kvElements)} values, ${bytes(stage.kvBytes)}`;
}
