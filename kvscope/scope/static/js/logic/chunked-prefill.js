// The chunked-prefill lesson's logic, free of the DOM: the request body of each of the
// two runs, each run's figures from its events (every step's measured time, the long
// prompt's chunks, the longest wait between two tokens of the short requests, the
// prefill totals), the bars of the two tracks, the side-by-side table and the readout.
// Every time here is one the engine measured in the run.

import {int, pct, plural} from '../format.js';

// The unchunked run's budget: every token the lesson's pool holds (64 blocks of 16), so
// no prompt that fits in the pool can be split.
export const UNCHUNKED_BUDGET = 1024;
export const POOL = {block_size: 16, num_blocks: 64};

// Whitespace runs (the textarea's line breaks) as single spaces.
export function collapse(text) {
  return text.replace(/\s+/g, ' ').trim();
}

// The body of one run: the short prompts from step 0 (requests 0, 1, …), the long prompt
// last, arriving before step `arriveAt`; the budget is the only thing the runs differ in.
export function runBody({shorts, long, maxTokens, arriveAt}, budget) {
  return {
    prompts: [...shorts, long],
    arrive_at_step: [...shorts.map(() => 0), arriveAt],
    max_tokens: maxTokens,
    max_num_batched_tokens: budget,
    max_num_seqs: 8,
    ...POOL,
    enable_prefix_caching: false,
  };
}

// The request id of the long prompt in a run built by runBody.
export const longId = (body) => String(body.prompts.length - 1);

// A step's measured time: scheduling, the forward pass, sampling and the update.
export const stepMs = (s) => s.schedule_ms + s.forward_ms + s.sample_ms + s.update_ms;

export const ms = (x) => `${x.toFixed(1)} ms`;

// The longest time between two consecutive tokens of one request other than `skip`:
// {ms, rid, from, to} (the steps of the two tokens), or null if none had two tokens.
export function longestGap(events, skip) {
  const last = new Map();
  let best = null;
  for (const e of events) {
    if (e.kind !== 'token_emitted' || e.request_id === skip) continue;
    const before = last.get(e.request_id);
    if (before) {
      const gap = (e.time - before.time) * 1000;
      if (!best || gap > best.ms) best = {ms: gap, rid: e.request_id, from: before.step, to: e.step};
    }
    last.set(e.request_id, e);
  }
  return best;
}

// One step as the tracks draw it: its time, its tokens, the long prompt's chunk in it
// (0 if none) and whether it prefilled any other prompt.
function stepRecord(e, long) {
  const chunk = e.batch.find((c) => c.request_id === long && c.phase === 'prefill');
  return {
    step: e.step, ms: stepMs(e), tokens: e.num_tokens, batch: e.batch,
    chunk: chunk ? chunk.num_tokens : 0,
    otherPrefill: e.batch.some((c) => c.request_id !== long && c.phase === 'prefill'),
  };
}

// Everything the page says about one run, from its events.
export function runFigures(events, long) {
  const started = events.find((e) => e.kind === 'engine_started');
  const arrived = events.find((e) => e.kind === 'request_arrived' && e.request_id === long);
  const steps = events.filter((e) => e.kind === 'step_end').map((e) => stepRecord(e, long));
  let prefillMs = 0;
  let totalMs = 0;
  let prefillTokens = 0;
  for (const s of steps) {
    totalMs += s.ms;
    if (s.chunk) prefillMs += s.ms;
    for (const c of s.batch) if (c.phase === 'prefill') prefillTokens += c.num_tokens;
  }
  return {
    budget: started.max_num_batched_tokens, long, steps, totalMs, prefillMs, prefillTokens,
    promptTokens: arrived ? arrived.prompt_token_ids.length : 0,
    arriveStep: arrived ? arrived.step : 0,
    numShort: events.filter((e) => e.kind === 'request_arrived').length - 1,
    chunks: steps.filter((s) => s.chunk).map((s) => s.chunk),
    chunkSteps: steps.filter((s) => s.chunk).map((s) => s.step),
    stall: longestGap(events, long),
  };
}

// SVG coordinates to 1/100 of a unit
const r2 = (x) => Math.round(x * 100) / 100;

// The bars of one track, on a scale shared by both: `maxMs` tops the band and
// `numSteps` slots fill the width. Each bar has its kind (long | prefill | decode),
// whether it is the stall's step, and a label for its tooltip.
export function trackBars(fig, {maxMs, numSteps, width = 600, band = 90, top = 26} = {}) {
  const slot = width / Math.max(1, numSteps);
  const stallStep = fig.stall ? fig.stall.to : null;
  return {
    width, height: top + band + 16, top, band,
    bars: fig.steps.map((s, i) => {
      const hgt = maxMs > 0 ? (band * s.ms) / maxMs : 0;
      const kind = s.chunk ? 'long' : s.otherPrefill ? 'prefill' : 'decode';
      return {
        index: i, step: s.step, kind, chunk: s.chunk, stall: s.step === stallStep,
        x: r2(i * slot + slot * 0.1), w: r2(Math.max(0.5, slot * 0.8)),
        y: r2(top + band - hgt), h: r2(hgt),
        label: `step ${s.step}: ${ms(s.ms)}, ${plural(s.tokens, 'token')}`
          + (s.chunk ? `, ${s.chunk} of them from the long prompt` : ''),
      };
    }),
  };
}

// The scale both tracks share.
export function sharedScale(a, b) {
  return {
    maxMs: Math.max(0, ...a.steps.map((s) => s.ms), ...b.steps.map((s) => s.ms)),
    numSteps: Math.max(a.steps.length, b.steps.length),
  };
}

export function chunkText(chunks) {
  return `${plural(chunks.length, 'chunk')} (${chunks.join(', ')} tokens)`;
}

// [4] -> "step 4", [4, 5] -> "steps 4, 5"
export function stepsText(steps) {
  return `${steps.length === 1 ? 'step' : 'steps'} ${steps.join(', ')}`;
}

export function stallText(stall) {
  if (!stall) return 'no short request made two tokens';
  return `${ms(stall.ms)} (request ${stall.rid}, between its tokens of steps ${stall.from} and ${stall.to})`;
}

// Which requests' token ids differ between the two runs' outputs.
export function differing(outputsA, outputsB) {
  return outputsA.filter((o, i) => JSON.stringify(o.token_ids) !== JSON.stringify(outputsB[i]?.token_ids))
    .map((o) => o.request_id);
}

// What chunking did to the stall and to the long prompt's prefill time, in words.
export function verdict(u, c) {
  const lines = [];
  if (c.chunks.length <= 1) {
    lines.push(`At a budget of ${c.budget} the long prompt fit in one step: nothing was chunked.`);
  }
  if (u.stall && c.stall) {
    lines.push(c.stall.ms < u.stall.ms
      ? `Chunking cut the longest wait between two tokens of a short request from ${ms(u.stall.ms)} to `
        + `${ms(c.stall.ms)}: ${(u.stall.ms / c.stall.ms).toFixed(1)}× shorter.`
      : `The longest wait between two tokens was not shorter with chunking here: ${ms(u.stall.ms)} `
        + `unchunked, ${ms(c.stall.ms)} chunked.`);
  }
  const change = c.prefillMs / u.prefillMs - 1;
  lines.push(`The long prompt's prefill took ${ms(u.prefillMs)} unchunked and ${ms(c.prefillMs)} chunked `
    + `(${plural(c.chunks.length, 'step')}): ${change >= 0
      ? `chunking did not shorten it; it took ${pct(change)} longer`
      : `${pct(-change)} less here, though the same ${c.promptTokens} prompt tokens went through the `
        + 'model either way: not work saved, but this machine\'s noise or cache effects'}.`);
  return lines;
}

// The rows of the side-by-side table: [figure, unchunked, chunked].
export function figureRows(u, c) {
  return [
    ['token budget per step', int(u.budget), int(c.budget)],
    ['steps', String(u.steps.length), String(c.steps.length)],
    ['longest wait between two tokens of a short request', u.stall ? ms(u.stall.ms) : '–',
      c.stall ? ms(c.stall.ms) : '–'],
    ['long prompt: chunks', chunkText(u.chunks), chunkText(c.chunks)],
    ['long prompt: prefill time (its steps)', ms(u.prefillMs), ms(c.prefillMs)],
    ['prefill tokens, all requests', int(u.prefillTokens), int(c.prefillTokens)],
    ['all steps together', ms(u.totalMs), ms(c.totalMs)],
  ];
}

// The readout: both runs' figures and what they show, in words.
// `diff`: the requests whose greedy tokens differ (differing()).
export function readoutLines(u, c, diff) {
  const run = (name, f) => [
    `${name}, token budget ${int(f.budget)}: ${plural(f.steps.length, 'step')}, ${ms(f.totalMs)} in all`,
    `  long prompt: ${chunkText(f.chunks)} in ${stepsText(f.chunkSteps)}, prefilled in ${ms(f.prefillMs)}`,
    `  longest wait between two tokens of a short request: ${stallText(f.stall)}`,
  ];
  return [
    `workload: ${plural(u.numShort, 'short request')} from step 0, then a ${u.promptTokens}-token prompt `
      + `(request ${u.long}) arriving before step ${u.arriveStep}`,
    ...run('unchunked', u),
    ...run('chunked', c),
    `prefill tokens: ${int(u.prefillTokens)} unchunked, ${int(c.prefillTokens)} chunked `
      + `(${u.prefillTokens === c.prefillTokens ? 'equal' : 'different'})`,
    ...verdict(u, c),
    diff.length ? `greedy tokens differ for request ${diff.join(', ')}`
      : 'greedy tokens: the same in both runs for every request',
  ];
}
