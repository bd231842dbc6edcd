// The Batching Lab: one workload run twice on the server, once by a static batcher and
// once with continuous batching; what each request did at each step of each run, and
// the figures measured from the two runs' events. No DOM here.

import {int, pct, plural} from '../format.js';

export const MODES = ['static', 'continuous'];

// What a lesson run accepts (the server checks them again).
export const LIMITS = {
  requests: [1, 8], words: [1, 150], output: [1, 64], arrival: [0, 500], seats: [1, 8],
};

// The text every prompt is cut from: request i starts at word 17·i (wrapping around),
// so no two prompts share a prefix.
export const PASSAGE = 'Every morning the baker on the corner lights her oven before the street '
  + 'wakes up. She weighs flour, salt and water, folds the dough by hand, and leaves it to rise '
  + 'under a linen cloth while the first tram rattles past the window. By six the shelves hold '
  + 'round loaves, thin crisp rolls and a tray of cinnamon buns that vanish before the school bell '
  + 'rings. Customers come in a slow trickle at first, then all at once: a nurse after a night '
  + 'shift, two builders in dusty boots, a child sent with a handful of coins and a note. The baker '
  + 'remembers who likes the dark rye and who wants the crust cut thin. When the rush is over she '
  + 'sweeps the floor, counts the till, writes the order for butter and seeds on a scrap of paper, '
  + 'and sits for a moment with a cup of strong tea, watching the light move across the empty '
  + 'shelves until it is time to start again.';

const WORDS = PASSAGE.split(' ');

// [prompt words, output tokens, arrival step] per request
const rows = (list) => list.map(([words, output, arrival]) => ({words, output, arrival}));

export const PRESETS = {
  'balanced': {
    label: 'balanced',
    blurb: 'Eight short prompts, all there at the start, answers of 8 to 16 tokens.',
    rows: rows([[10, 8, 0], [12, 14, 0], [9, 10, 0], [11, 16, 0],
                [12, 10, 0], [10, 16, 0], [11, 8, 0], [9, 12, 0]]),
  },
  'prompt-heavy': {
    label: 'prompt-heavy',
    blurb: 'Eight long prompts (60 to 120 words) with answers of only 3 to 8 tokens.',
    rows: rows([[120, 6, 0], [70, 3, 0], [100, 8, 0], [60, 4, 0],
                [110, 5, 0], [80, 8, 0], [95, 3, 0], [65, 6, 0]]),
  },
  'long-tail': {
    label: 'long-tail outputs',
    blurb: 'Most answers take 3 or 4 tokens; two take 24 and 32.',
    rows: rows([[10, 3, 0], [12, 4, 0], [9, 32, 0], [11, 4, 0],
                [12, 3, 0], [10, 24, 0], [11, 4, 0], [9, 3, 0]]),
  },
  'bursty': {
    label: 'bursty arrivals',
    blurb: 'Three requests at the start, three more before step 3, two before step 8.',
    rows: rows([[10, 10, 0], [12, 8, 0], [9, 12, 0], [11, 10, 3],
                [12, 12, 3], [10, 8, 3], [11, 10, 8], [9, 8, 8]]),
  },
};

export const DEFAULT_SEATS = 4;

// The first `words` words of the passage from request `index`'s starting word.
export function promptOf(index, words) {
  const start = (17 * index) % WORDS.length;
  const out = [];
  for (let i = 0; i < words; i++) out.push(WORDS[(start + i) % WORDS.length]);
  return out.join(' ');
}

export function formatRows(list) {
  return list.map((r) => `${r.words}, ${r.output}, ${r.arrival}`).join('\n');
}

function inRange(value, [lo, hi]) {
  return Number.isInteger(value) && value >= lo && value <= hi;
}

// The workload typed in the editor: one request per line, "prompt words, output tokens,
// arrival step". Throws an Error that names the first line it cannot take.
export function parseRows(text) {
  const lines = text.split('\n').map((line) => line.trim()).filter(Boolean);
  const [least, most] = LIMITS.requests;
  if (lines.length < least || lines.length > most) {
    throw new Error(`the workload needs ${least} to ${most} requests, one per line; it has ${lines.length}`);
  }
  return lines.map((line, i) => {
    const parts = line.split(/[\s,]+/).filter(Boolean);
    const values = parts.map(Number);
    if (parts.length !== 3 || values.some((v) => !Number.isInteger(v))) {
      throw new Error(`line ${i + 1} ("${line}"): write three whole numbers, `
        + 'prompt words, output tokens and arrival step');
    }
    const [words, output, arrival] = values;
    for (const [name, value, range] of [['prompt words', words, LIMITS.words],
      ['output tokens', output, LIMITS.output], ['arrival step', arrival, LIMITS.arrival]]) {
      if (!inRange(value, range)) {
        throw new Error(`line ${i + 1}: ${name} must be between ${range[0]} and ${range[1]}; got ${value}`);
      }
    }
    return {words, output, arrival};
  });
}

export function checkSeats(seats) {
  if (!inRange(seats, LIMITS.seats)) {
    throw new Error(`seats (max_num_seqs) must be between ${LIMITS.seats[0]} and ${LIMITS.seats[1]}`);
  }
  return seats;
}

// The lab run of a workload in one batching mode. The pool is large enough that
// nobody is preempted, and prefix caching is off, so both runs compute the same tokens.
export function labBody(list, seats, batching) {
  return {
    prompts: list.map((r, i) => promptOf(i, r.words)),
    max_tokens_each: list.map((r) => r.output),
    arrive_at_step: list.map((r) => r.arrival),
    max_num_seqs: seats,
    batching,
    block_size: 16,
    num_blocks: 160,
    max_num_batched_tokens: 256,
    enable_prefix_caching: false,
  };
}

// -- what a run's events say ------------------------------------------------------------

function newRequest(e) {
  return {rid: e.request_id, arrivedStep: e.step, arrivedAt: e.time, promptLen: e.prompt_token_ids.length,
          firstTokenAt: null, finishedAt: null, finishedStep: null, outputs: 0, chunks: {}};
}

// Each request's arrival, chunks, first token and finish, and each step's batch and
// times, from one run's events.
export function summarize(events) {
  const requests = {};
  const steps = [];
  let seats = 0;
  let begin = null;
  for (const e of events) {
    const r = requests[e.request_id];
    switch (e.kind) {
      case 'engine_started': seats = e.max_num_seqs; break;
      case 'request_arrived': requests[e.request_id] = newRequest(e); break;
      case 'step_begin': begin = e.time; break;
      case 'token_emitted':
        if (r.firstTokenAt === null) r.firstTokenAt = e.time;
        r.outputs += 1;
        break;
      case 'request_finished':
        r.finishedAt = e.time;
        r.finishedStep = e.step;
        break;
      case 'step_end':
        for (const c of e.batch) {
          requests[c.request_id].chunks[e.step] = {phase: c.phase === 'prefill' ? 'prefill' : 'decode',
                                                   tokens: c.num_tokens};
        }
        steps.push({step: e.step, begin: begin ?? e.time, end: e.time, busy: e.batch.length,
                    tokens: e.num_tokens});
        break;
      default:
    }
  }
  const order = Object.keys(requests).sort((a, b) => Number(a) - Number(b));
  return {seats, requests, order, steps};
}

// The batches a static batcher formed: whenever no batch is unfinished as a step
// begins, the first `seats` requests that arrived and are in no batch yet (the rule of
// the engine's batching="static").
export function staticBatches(events, seats) {
  const queue = [];
  const batches = [];
  let open = new Set();
  for (const e of events) {
    if (e.kind === 'request_arrived') queue.push(e.request_id);
    else if (e.kind === 'request_finished') open.delete(e.request_id);
    else if (e.kind === 'step_begin' && open.size === 0 && queue.length) {
      const members = queue.splice(0, seats);
      batches.push(members);
      open = new Set(members);
    }
  }
  return batches;
}

// The last step each request's batch ran (static): a member that finished earlier
// keeps its seat, idle, until then.
function batchEnds(batches, requests) {
  const ends = {};
  for (const members of batches) {
    const end = Math.max(...members.map((rid) => requests[rid].finishedStep ?? Infinity));
    for (const rid of members) ends[rid] = end;
  }
  return ends;
}

// What request `r` did at engine step `step`: 'absent' (not arrived yet), 'waiting',
// 'prefill', 'decode', 'idle' (finished, its seat held by its static batch) or 'finished'.
export function cellState(r, step, batchEnd) {
  if (step < r.arrivedStep) return 'absent';
  const chunk = r.chunks[step];
  if (chunk) return chunk.phase;
  if (r.finishedStep !== null && step > r.finishedStep) {
    return batchEnd !== undefined && step <= batchEnd ? 'idle' : 'finished';
  }
  return 'waiting';
}

// One lane per request: its state at every step of the run (columns follow the run's
// steps, in order).
export function lanes(summary, batches = null) {
  const ends = batches ? batchEnds(batches, summary.requests) : {};
  return summary.order.map((rid) => {
    const r = summary.requests[rid];
    return {rid, cells: summary.steps.map((s) => ({state: cellState(r, s.step, ends[rid]),
                                                  tokens: r.chunks[s.step]?.tokens ?? 0}))};
  });
}

// The q-quantile (0..1) by linear interpolation between the sorted values.
export function percentile(values, q) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const at = (sorted.length - 1) * q;
  const lo = Math.floor(at);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo);
}

const mean = (values) => values.reduce((a, b) => a + b, 0) / values.length;

// What a padded static batch would compute for nothing (computed, not run): every
// prompt padded to the longest of its batch, and every member that finished early
// still given a decode slot until the batch's longest answer is done.
export function padding(batches, requests) {
  let prompt = 0;
  let decode = 0;
  let computed = 0;
  for (const members of batches) {
    const rs = members.map((rid) => requests[rid]);
    const longest = Math.max(...rs.map((r) => r.promptLen));
    const most = Math.max(...rs.map((r) => r.outputs));
    for (const r of rs) {
      prompt += longest - r.promptLen;
      decode += most - r.outputs;
    }
    computed += rs.length * (longest + most - 1);  // the first output token comes from the prefill
  }
  return {prompt, decode, total: prompt + decode, computed};
}

// The measured figures of one run (seconds; `data` is the lab response).
export function figures(data, batching) {
  const summary = summarize(data.events);
  const rs = summary.order.map((rid) => summary.requests[rid]);
  const {steps, seats} = summary;
  const wall = steps.length ? steps[steps.length - 1].end - steps[0].begin : 0;
  const outputTokens = rs.reduce((n, r) => n + r.outputs, 0);
  const ttft = rs.map((r) => r.firstTokenAt - r.arrivedAt);
  const e2e = rs.map((r) => r.finishedAt - r.arrivedAt);
  const busy = steps.reduce((n, s) => n + s.busy, 0);
  const batches = batching === 'static' ? staticBatches(data.events, seats) : null;
  return {
    batching, summary, batches, seats,
    steps: steps.length, wall, outputTokens, tokPerS: outputTokens / wall,
    ttft, e2e,
    ttftMean: mean(ttft), ttftP99: percentile(ttft, 0.99),
    e2eMean: mean(e2e), e2eP99: percentile(e2e, 0.99),
    busy, slotSteps: seats * steps.length, utilisation: busy / (seats * steps.length),
    engineSlotSteps: data.num_slot_steps ?? 0, engineIdleSlotSteps: data.num_idle_slot_steps ?? 0,
    padding: batches ? padding(batches, summary.requests) : null,
  };
}

// For each request (by id), whether both runs generated the same token ids.
export function sameTokens(a, b) {
  const byId = (outputs) => Object.fromEntries(outputs.map((o) => [o.request_id, o.token_ids]));
  const x = byId(a);
  const y = byId(b);
  const ids = Object.keys(x).sort((p, q) => Number(p) - Number(q));
  return ids.map((rid) => ({rid, same: JSON.stringify(x[rid]) === JSON.stringify(y[rid] ?? null)}));
}

// -- words ------------------------------------------------------------------------------

export const ms = (seconds) => `${(1000 * seconds).toFixed(1)} ms`;
export const secs = (seconds) => `${seconds.toFixed(2)} s`;
export const ratio = (x) => `${x.toFixed(2)}×`;
export const rate = (x) => `${x.toFixed(1)} tokens/s`;

// The rows of the side-by-side table: [figure, static, continuous, continuous ÷ static].
export function tableRows(s, c) {
  const row = (name, f, key) => [name, f(s[key]), f(c[key]), ratio(c[key] / s[key])];
  const util = (f) => `${pct(f.utilisation)} (${int(f.busy)} of ${int(f.slotSteps)})`;
  const pad = s.padding;
  return [
    row('steps', int, 'steps'),
    row('wall time', secs, 'wall'),
    row('output tokens per second', rate, 'tokPerS'),
    row('time to first token, mean', ms, 'ttftMean'),
    row('time to first token, p99', ms, 'ttftP99'),
    row('end-to-end latency, mean', ms, 'e2eMean'),
    row('end-to-end latency, p99', ms, 'e2eP99'),
    ['slot utilisation (busy slot-steps of seats × steps)', util(s), util(c), ratio(c.utilisation / s.utilisation)],
    ['padding a padded batch would compute (computed)',
     `${int(pad.total)} tokens: ${int(pad.prompt)} prompt + ${int(pad.decode)} decode`,
     'none: no padded batch', '—'],
  ];
}

function runLine(f) {
  return `${f.batching}: ${plural(f.steps, 'step')} in ${secs(f.wall)}, ${int(f.outputTokens)} output tokens, `
    + `${rate(f.tokPerS)}; time to first token mean ${ms(f.ttftMean)}, p99 ${ms(f.ttftP99)}; `
    + `end-to-end latency mean ${ms(f.e2eMean)}, p99 ${ms(f.e2eP99)}; slot utilisation `
    + `${pct(f.utilisation)} (${int(f.busy)} busy of ${int(f.slotSteps)} slot-steps)`;
}

// The readout: both runs' figures in words, how they compare, the padding and whether
// the tokens agree.
export function readoutLines(workload, s, c, same) {
  const pad = s.padding;
  const agree = same.filter((x) => x.same).length;
  const differ = same.filter((x) => !x.same).map((x) => x.rid);
  const n = s.summary.order.length;
  return [
    `workload: ${workload}; ${plural(n, 'request')}, ${s.seats} seats (max_num_seqs)`,
    runLine(s),
    runLine(c),
    `continuous against static: ${ratio(c.steps / s.steps)} the steps, ${ratio(c.wall / s.wall)} the wall time, `
      + `${ratio(c.tokPerS / s.tokPerS)} the output tokens/s, ${ratio(c.ttftMean / s.ttftMean)} the mean time to `
      + `first token, ${ratio(c.e2eMean / s.e2eMean)} the mean end-to-end latency`,
    `static batches: ${s.batches.map((b) => `[${b.join(', ')}]`).join(' ')}; the engine counted `
      + `${int(s.engineIdleSlotSteps)} idle of ${int(s.engineSlotSteps)} seat-steps while they ran`,
    `padding a padded static batch would compute (computed, not run): ${int(pad.prompt)} prompt tokens `
      + `(each prompt padded to the longest of its batch) + ${int(pad.decode)} decode slots of finished `
      + `sequences = ${int(pad.total)} tokens, ${pct(pad.computed ? pad.total / pad.computed : 0)} of the `
      + `${int(pad.computed)} it would compute`,
    `same greedy tokens in both runs: ${agree} of ${n} requests`
      + (differ.length ? ` (different: ${differ.join(', ')})` : ''),
  ];
}

const STATE_WORDS = {prefill: 'prefill', decode: 'decode', idle: 'idle slot', waiting: 'waiting',
                     finished: 'finished', absent: 'not arrived'};

// What every request of one run did at step index `i`, in words.
export function stepLine(f, laneList, i) {
  if (i >= f.steps) return `${f.batching}: the run had ended after ${plural(f.steps, 'step')}`;
  const groups = {};
  for (const lane of laneList) {
    const cell = lane.cells[i];
    const what = cell.state === 'prefill' ? `${lane.rid} (${plural(cell.tokens, 'token')})` : lane.rid;
    (groups[cell.state] ??= []).push(what);
  }
  const parts = Object.keys(STATE_WORDS).filter((k) => groups[k])
    .map((k) => `${STATE_WORDS[k]} ${groups[k].join(', ')}`);
  const s = f.summary.steps[i];
  return `${f.batching}, step ${s.step}: ${parts.join('; ')} (${s.busy} of ${f.seats} seats busy, `
    + `${plural(s.tokens, 'token')})`;
}
