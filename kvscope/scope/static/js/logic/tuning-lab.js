// The Tuning Lab: engine settings measured on one short serving workload, each a
// point of latency against throughput. The recorded sweep (kvscope bench sweep) and
// the reader's live runs (POST /scope/api/lab/tuning) come from the same measuring
// function on the server; this module reads their JSON, checks the knobs, lays out the
// two scatter plots and writes the readout. No DOM here.

import {pct} from '../format.js';

// What the server accepts for each knob (bench/tuning.py TuningRun checks them again).
export const LIMITS = {
  max_num_seqs: [1, 32],
  max_num_batched_tokens: [16, 2048],
  num_blocks: [4, 512],
  request_rate: [0, 100],  // exclusive of 0; null sends every request at once
};
export const BLOCK_SIZE = 16;
export const NGRAM_TOKENS = 4;
export const RATES = [null, 1, 2, 4, 8, 16];

// The two charts: which latency goes up the y axis of each.
export const CHARTS = {
  ttft: {metric: 'ttftMean', title: 'Time to first token (mean, ms)'},
  tpot: {metric: 'tpotMean', title: 'Time per output token (mean, ms)'},
};

export const fixed = (x, digits) => (x === null || x === undefined ? '–' : x.toFixed(digits));
export const ms = (x) => (x === null || x === undefined ? '–' : `${x.toFixed(1)} ms`);
const rateText = (rate) => (rate === null ? 'all at once' : `${rate} req/s`);

// "seqs 4 · budget 256 · 64 blocks · prefix on · ngram off · all at once"
export function settingLabel(s) {
  return [`seqs ${s.max_num_seqs}`, `budget ${s.max_num_batched_tokens}`,
    `${s.num_blocks} blocks`, `prefix ${s.enable_prefix_caching ? 'on' : 'off'}`,
    `ngram ${s.speculative === 'ngram' ? 'on' : 'off'}`, rateText(s.request_rate)].join(' · ');
}

export function sameSetting(a, b) {
  return Object.keys(a).every((k) => a[k] === b[k]);
}

function whole(name, value) {
  const [lo, hi] = LIMITS[name];
  if (!Number.isInteger(value) || value < lo || value > hi) {
    throw new Error(`${name} must be a whole number from ${lo} to ${hi}; got ${Number.isNaN(value) ? 'nothing' : value}`);
  }
  return value;
}

// The knobs as read from the form -> a setting the server takes, or an Error saying
// which knob is off. `workload` (the sweep's) decides how many blocks one request needs.
export function checkSetting(raw, workload) {
  const setting = {
    max_num_seqs: whole('max_num_seqs', raw.max_num_seqs),
    max_num_batched_tokens: whole('max_num_batched_tokens', raw.max_num_batched_tokens),
    num_blocks: whole('num_blocks', raw.num_blocks),
    enable_prefix_caching: Boolean(raw.enable_prefix_caching),
    speculative: raw.speculative === 'ngram' ? 'ngram' : 'off',
    request_rate: raw.request_rate === null ? null : Number(raw.request_rate),
  };
  const rate = setting.request_rate;
  if (rate !== null && !(rate > LIMITS.request_rate[0] && rate <= LIMITS.request_rate[1])) {
    throw new Error(`request_rate must be above 0 and at most ${LIMITS.request_rate[1]} per second`);
  }
  if (workload) {
    const need = workload.input_len + workload.output_len
      + (setting.speculative === 'ngram' ? NGRAM_TOKENS : 0);
    if (setting.num_blocks * BLOCK_SIZE < need) {
      throw new Error(`num_blocks ${setting.num_blocks} holds ${setting.num_blocks * BLOCK_SIZE} tokens, `
        + `but one request needs ${need}: give the pool at least ${Math.ceil(need / BLOCK_SIZE)} blocks`);
    }
  }
  return setting;
}

// The body of POST /scope/api/lab/tuning: the setting on the recorded sweep's workload
// (so the live point is comparable), or on the server's default workload.
export function runBody(setting, workload) {
  return {...setting, ...(workload ?? {})};
}

// One point of the plots from a measured JSON point (recorded or live).
export function pointOf(raw, source, index) {
  const m = raw.metrics;
  return {
    source, index, setting: raw.setting, label: settingLabel(raw.setting),
    ttftMean: m.ttft_ms.mean, ttftP99: m.ttft_ms.p99, tpotMean: m.tpot_ms.mean,
    tpotP99: m.tpot_ms.p99, itlMean: m.itl_ms.mean, itlP99: m.itl_ms.p99,
    tokPerS: m.output_throughput, reqPerS: m.request_throughput, durationS: m.duration_s,
    completed: m.completed, requests: m.requests, engine: raw.engine,
    waitS: raw.budget_wait_s ?? 0,
  };
}

// Every point of a recorded sweep file, in its order; throws on a file of another kind.
export function sweepPoints(doc) {
  if (doc?.kind !== 'kvscope-tuning-sweep' || !Array.isArray(doc.points)) {
    throw new Error('the recorded sweep is not a kvscope-tuning-sweep file');
  }
  return doc.points.map((p, i) => pointOf(p, 'recorded', i));
}

// The points no other point beats on both axes (more tok/s and less latency), by
// throughput: the trade-off curve of the best settings found so far.
export function frontier(points, metric) {
  const usable = points.filter((p) => p[metric] !== null && p.tokPerS > 0);
  return usable.filter((p) => !usable.some((q) => q !== p && q.tokPerS >= p.tokPerS
    && q[metric] <= p[metric] && (q.tokPerS > p.tokPerS || q[metric] < p[metric])))
    .sort((a, b) => a.tokPerS - b.tokPerS);
}

// Round numbers for an axis from 0 to at least `max`: about `count` steps of 1, 2 or 5
// times a power of ten.
export function niceTicks(max, count = 5) {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const ticks = [];
  for (let v = 0; v < max + step / 2 && ticks.length < 50; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < max) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

// Ticks on a log scale covering [lo, hi]: 1, 2 and 5 times powers of ten.
export function logTicks(lo, hi) {
  const ticks = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e += 1) {
    for (const m of [1, 2, 5]) {
      const v = Number((m * 10 ** e).toPrecision(6));
      if (v >= lo / 1.0001 && v <= hi * 1.0001) ticks.push(v);
    }
  }
  return ticks;
}

// Where every point of one chart goes in a `width` × `height` box: x is output tokens/s
// (linear from 0), y the chart's latency on a log scale (latencies span decades).
// Points without that latency are left out.
export function layout(points, metric, {width = 320, height = 220, pad = {l: 44, r: 10, t: 10, b: 30}} = {}) {
  const shown = points.filter((p) => p[metric] !== null && p[metric] > 0);
  const xs = niceTicks(Math.max(1, ...shown.map((p) => p.tokPerS)));
  const ys = shown.map((p) => p[metric]);
  const lo = ys.length ? Math.min(...ys) : 1;
  const hi = ys.length ? Math.max(...ys) : 10;
  const yLo = 10 ** (Math.floor(Math.log10(lo) * 2) / 2);
  const yHi = Math.max(10 ** (Math.ceil(Math.log10(hi) * 2) / 2), yLo * 10);
  const x = (v) => pad.l + ((width - pad.l - pad.r) * v) / xs[xs.length - 1];
  const y = (v) => height - pad.b - ((height - pad.t - pad.b) * Math.log10(v / yLo)) / Math.log10(yHi / yLo);
  const round = (v) => Math.round(v * 10) / 10;
  return {
    width, height, pad,
    xTicks: xs.map((v) => ({v, at: round(x(v))})),
    yTicks: logTicks(yLo, yHi).map((v) => ({v, at: round(y(v))})),
    dots: shown.map((p) => ({point: p, x: round(x(p.tokPerS)), y: round(y(p[metric]))})),
    line: frontier(shown, metric).map((p) => `${round(x(p.tokPerS))},${round(y(p[metric]))}`).join(' '),
  };
}

// How far apart two settings are: knobs that differ count 1 each, a numeric knob by
// how many doublings apart it is (so seqs 4 is nearer 8 than 1).
export function settingDistance(a, b) {
  let d = 0;
  for (const k of ['max_num_seqs', 'max_num_batched_tokens', 'num_blocks']) {
    d += Math.abs(Math.log2(a[k] / b[k]));
  }
  d += a.enable_prefix_caching === b.enable_prefix_caching ? 0 : 1;
  d += a.speculative === b.speculative ? 0 : 1;
  const ra = a.request_rate ?? Infinity;
  const rb = b.request_rate ?? Infinity;
  if (ra !== rb) d += (ra === Infinity || rb === Infinity) ? 1 : Math.abs(Math.log2(ra / rb));
  return d;
}

// The recorded point whose setting is nearest the live one (the first of equals), or null.
export function nearest(live, recorded) {
  let best = null;
  let bestD = Infinity;
  for (const p of recorded) {
    const d = settingDistance(live.setting, p.setting);
    if (d < bestD) { best = p; bestD = d; }
  }
  return best;
}

// Which knobs of `b` differ from `a`, as text.
export function differences(a, b) {
  const names = {max_num_seqs: 'seqs', max_num_batched_tokens: 'budget', num_blocks: 'blocks',
                 enable_prefix_caching: 'prefix', speculative: 'ngram', request_rate: 'rate'};
  return Object.keys(names).filter((k) => a[k] !== b[k]).map((k) => names[k]);
}

const ratio = (a, b) => (a === null || b === null || !b ? '–' : `${(a / b).toFixed(2)}×`);

export function machineLine(m) {
  return `${m.cpu}, ${m.torch_threads} torch threads, kernels ${m.kernel_isa}; ${m.model} in ${m.dtype} `
    + `(weights ${m.weights})`;
}

// The figures of one point, as one line each for the readout.
export function pointLines(p) {
  const e = p.engine;
  return [
    `measured: ${p.completed} of ${p.requests} requests in ${fixed(p.durationS, 2)} s; `
      + `output ${fixed(p.tokPerS, 1)} tok/s, ${fixed(p.reqPerS, 2)} req/s`,
    `TTFT mean ${ms(p.ttftMean)}, p99 ${ms(p.ttftP99)}; TPOT mean ${ms(p.tpotMean)}, p99 ${ms(p.tpotP99)}; `
      + `ITL mean ${ms(p.itlMean)}, p99 ${ms(p.itlP99)}`,
    `engine: ${e.steps} steps, ${e.preemptions} preemptions, prefix-cache hit rate ${pct(e.prefix_cache_hit_rate)}, `
      + `draft acceptance ${e.draft_acceptance_rate === null ? '–' : pct(e.draft_acceptance_rate)}`,
  ];
}

// The readout after a live run: its setting and figures, the nearest recorded point and
// the live figures over the recorded ones, and where each was measured.
export function readoutLines(live, count, neighbour, liveMachine, sweepMachine) {
  const lines = [`live point ${count}: ${live.label}`, ...pointLines(live)];
  if (live.waitS >= 0.01) {
    lines.push(`the run waited ${fixed(live.waitS, 2)} s for the server's own requests; its times include that`);
  }
  if (neighbour) {
    const diff = differences(live.setting, neighbour.setting);
    lines.push(`nearest recorded point: ${neighbour.label} (${diff.length ? `differs in ${diff.join(', ')}` : 'same setting'}): `
      + `TTFT mean ${ms(neighbour.ttftMean)}, TPOT mean ${ms(neighbour.tpotMean)}, ${fixed(neighbour.tokPerS, 1)} tok/s`);
    lines.push(`live ÷ recorded: TTFT ${ratio(live.ttftMean, neighbour.ttftMean)}, `
      + `TPOT ${ratio(live.tpotMean, neighbour.tpotMean)}, throughput ${ratio(live.tokPerS, neighbour.tokPerS)}`);
  } else {
    lines.push('nearest recorded point: none (the recorded sweep did not load)');
  }
  lines.push(`measured on: ${machineLine(liveMachine)}`);
  if (sweepMachine) {
    const same = sweepMachine.cpu === liveMachine.cpu && sweepMachine.dtype === liveMachine.dtype
      && sweepMachine.weights === liveMachine.weights && sweepMachine.torch_threads === liveMachine.torch_threads;
    lines.push(same ? 'the recorded sweep: the same CPU, threads, dtype and weights'
      : `the recorded sweep: ${machineLine(sweepMachine)} (not the same: compare the shapes, not the numbers)`);
  }
  return lines;
}

// One table row per point: source, setting, then the figures as text.
export function tableRow(p) {
  return [p.source === 'live' ? `live ${p.index + 1}` : `recorded ${p.index + 1}`, p.label,
    ms(p.ttftMean), ms(p.ttftP99), ms(p.tpotMean), ms(p.tpotP99), ms(p.itlMean),
    fixed(p.tokPerS, 1), fixed(p.reqPerS, 2)];
}

// What hovering or focusing a point says.
export function pointTitle(p) {
  return `${p.source === 'live' ? `live ${p.index + 1}` : `recorded ${p.index + 1}`}: ${p.label}: `
    + `${fixed(p.tokPerS, 1)} tok/s, TTFT ${ms(p.ttftMean)}, TPOT ${ms(p.tpotMean)}`;
}

// A line about the recorded sweep for the page.
export function sweepSummary(doc, points) {
  const best = [...points].sort((a, b) => b.tokPerS - a.tokPerS)[0];
  const fastest = [...points].filter((p) => p.ttftMean !== null).sort((a, b) => a.ttftMean - b.ttftMean)[0];
  const w = doc.workload;
  return [
    `${points.length} recorded points, measured ${doc.date} on ${machineLine(doc.machine)}.`,
    `Workload: ${w.num_requests} requests of ${w.input_len} prompt tokens (the first ${w.shared_prefix_len} shared) `
      + `and ${w.output_len} output tokens each, greedy.`,
    best ? `Most throughput: ${best.label} at ${fixed(best.tokPerS, 1)} tok/s (TPOT ${ms(best.tpotMean)}). `
      + `Lowest TTFT: ${fastest.label} at ${ms(fastest.ttftMean)}.` : '',
    doc.load_average ? `The machine's load average was ${doc.load_average[0]} when the sweep ended `
      + `(on ${doc.machine.torch_threads} threads; a busy machine makes single points noisy).` : '',
  ].filter(Boolean);
}
