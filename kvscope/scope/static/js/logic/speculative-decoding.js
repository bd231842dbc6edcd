// What a speculative-decoding run says, step by step: each verifying pass of the one
// request (its drafts, how many the target accepted, the KV slots they took), the blocks
// trimmed, the tokens emitted, and the readout's lines. No DOM here.

import {emptyState, applyEvent} from '../state.js';
import {pct, plural} from '../format.js';

export const RID = '0';  // the lab names its one prompt's request "0"

const noStep = () => ({verify: null, trims: [], emitted: [], end: null, finished: null});

// One record per engine step: the verification of request 0's drafts (with the token
// it computed from, the position of that token and its block table at that moment), the
// blocks trimmed (before the pass: scratch slots the early-exit draft borrowed; after it:
// blocks that held only rejected drafts), the tokens emitted, and the step's end. Each
// carries its event index, so a position in the middle of a step shows only what
// happened so far. `body` is the request the page sent (its speculative_config).
export function speculativeRun(data, body) {
  const {events} = data;
  const steps = new Map();
  const passes = [];
  const state = emptyState();
  const at = (step) => {
    if (!steps.has(step)) steps.set(step, noStep());
    return steps.get(step);
  };
  events.forEach((e, index) => {
    const mine = e.request_id === RID;
    const r = at(e.step);
    if (e.kind === 'drafts_verified' && mine) {
      const req = state.requests[RID];
      r.verify = {index, step: e.step, drafts: e.draft_token_ids, accepted: e.num_accepted,
                  tokens: e.token_ids, known: req.outputTokenIds.at(-1),
                  start: req.promptTokenIds.length + req.outputTokenIds.length - 1,
                  table: [...(state.tables[RID] ?? [])]};
      passes.push(r.verify);
    } else if (e.kind === 'blocks_trimmed' && mine) {
      r.trims.push({index, blocks: e.block_ids, rejected: r.verify !== null});
    } else if (e.kind === 'token_emitted' && mine) {
      r.emitted.push({index, id: e.token_id});
    } else if (e.kind === 'request_finished' && mine) {
      r.finished = {index, reason: e.reason, tokens: e.num_output_tokens};
    } else if (e.kind === 'step_end') {
      r.end = {index, chunk: e.batch.find((c) => c.request_id === RID) ?? null};
    }
    applyEvent(state, e);
  });
  return {
    events, steps, passes,
    spec: body.speculative_config,
    bs: events[0].block_size,
    numLayers: events[0].num_layers,
    texts: new Map(Object.entries(data.token_texts ?? {}).map(([id, text]) => [Number(id), text])),
    output: data.outputs[0],
    plain: data.plain ? data.plain.outputs[0] : null,
  };
}

// What step `step` did up to event position `pos`.
export function stepSoFar(run, step, pos) {
  const r = run.steps.get(step) ?? noStep();
  const before = (x) => (x && x.index < pos ? x : null);
  return {
    verify: before(r.verify),
    trims: r.trims.filter((t) => t.index < pos),
    emitted: r.emitted.filter((t) => t.index < pos),
    end: before(r.end),
    finished: before(r.finished),
  };
}

// -- token texts ------------------------------------------------------------------------

export const textOf = (run, id) => (run.texts.has(id) ? run.texts.get(id) : `#${id}`);
const quoted = (run, ids) => ids.map((id) => JSON.stringify(textOf(run, id))).join(', ');

// A token as drawn: newlines as ⏎, the empty text as ∅.
export function shown(run, id) {
  const t = textOf(run, id).replace(/\n/g, '⏎');
  return t === '' ? '∅' : t;
}

const idList = (ids) => ids.join(', ');
const nPasses = (n) => `${n} ${n === 1 ? 'pass' : 'passes'}`;

// -- the readout's lines ----------------------------------------------------------------

export function methodLine(run) {
  const {spec} = run;
  if (spec.method === 'ngram') {
    return `method: n-gram lookup, k = ${spec.num_speculative_tokens}, longest n-gram ${spec.prompt_lookup_max}`;
  }
  const layers = spec.draft_layers ?? Math.floor(run.numLayers / 2);
  return `method: early-exit self-draft, k = ${spec.num_speculative_tokens}, drafts from the first `
    + `${layers} of ${run.numLayers} layers`;
}

export function verdictLine(run, step, now) {
  const v = now.verify;
  if (v) {
    const bonus = v.accepted === v.drafts.length;
    return `step ${step}: drafted ${v.drafts.length} (${quoted(run, v.drafts)}), accepted ${v.accepted}, `
      + `target added 1 (${bonus ? 'bonus' : 'correction'} ${JSON.stringify(textOf(run, v.tokens.at(-1)))})`;
  }
  const chunk = now.end?.chunk;
  if (!now.end) return `step ${step}: nothing verified yet`;
  if (!chunk) return `step ${step}: request ${RID} not in the batch`;
  if (chunk.phase === 'prefill') return `step ${step}: prefill of ${chunk.num_tokens} prompt tokens, no drafts`;
  return `step ${step}: no drafts, a plain decode of 1 token`;
}

// `req` is the request as the state has folded it so far.
export function runLine(req) {
  const done = req.verifications;
  if (!done.length) return 'run so far: no verifying pass yet';
  const made = done.reduce((sum, v) => sum + v.tokenIds.length, 0);
  return `run so far: ${req.draftTokens} drafted, ${req.acceptedTokens} accepted `
    + `(${pct(req.acceptedTokens / req.draftTokens)}), ${(made / done.length).toFixed(2)} tokens `
    + `per verifying pass (${nPasses(done.length)})`;
}

// The positions of the drafts of a verification and the blocks those slots are in.
export function draftSlots(run, v) {
  const positions = v.drafts.map((_, i) => v.start + 1 + i);
  const blocks = [...new Set(positions.map((p) => v.table[Math.floor(p / run.bs)]))];
  return {positions, blocks};
}

export function slotsLine(run, now) {
  const v = now.verify;
  if (!v) return 'draft KV slots this step: none';
  const {positions, blocks} = draftSlots(run, v);
  const where = positions.length === 1 ? `position ${positions[0]}`
    : `positions ${positions[0]}–${positions.at(-1)}`;
  return `draft KV slots this step: ${positions.length} (${where}) in `
    + `${blocks.length === 1 ? 'block' : 'blocks'} ${idList(blocks)}`;
}

// The blocks trimmed so far this step: before the pass (empty scratch slots) and after it
// (only rejected drafts).
export function trimmed(now) {
  const empty = now.trims.filter((t) => !t.rejected).flatMap((t) => t.blocks);
  const rejected = now.trims.filter((t) => t.rejected).flatMap((t) => t.blocks);
  return {empty, rejected, all: [...empty, ...rejected]};
}

export function trimLine(now) {
  const {empty, rejected, all} = trimmed(now);
  if (!all.length) return 'blocks trimmed this step: none';
  const parts = [];
  if (empty.length) parts.push(`${idList(empty)}: slots the draft passes borrowed`);
  if (rejected.length) parts.push(`${idList(rejected)}: only rejected drafts`);
  return `blocks trimmed this step: ${all.length} (${parts.join('; ')})`;
}

// The first position where two token lists differ (null: identical).
export function firstDifference(a, b) {
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return null;
}

export function compareLine(run) {
  if (!run.plain) return 'plain greedy run without speculation: not run';
  const a = run.output.token_ids;
  const b = run.plain.token_ids;
  const at = firstDifference(a, b);
  return at === null
    ? `plain greedy run without speculation: identical token ids (${plural(a.length, 'token')})`
    : `plain greedy run without speculation: differs from token ${at} on (speculative ${a.length} `
      + `tokens, plain ${b.length})`;
}

// The sentence under the two outputs ('' without a plain run).
export function sameText(run) {
  if (!run.plain) return '';
  const a = run.output.token_ids;
  const at = firstDifference(a, run.plain.token_ids);
  return at === null
    ? `Identical token ids: the server ran the prompt again without speculation and all `
      + `${plural(a.length, 'token')} came out the same.`
    : `The two runs differ from token ${at} on.`;
}

export function readoutLines(run, state, timeline) {
  const step = timeline.lastEvent ? state.step : 0;
  const now = stepSoFar(run, step, timeline.pos);
  const req = state.requests[RID];
  const lines = [`step ${step}, event ${timeline.pos} of ${timeline.length}`, methodLine(run)];
  if (req) {
    lines.push(verdictLine(run, step, now), runLine(req), slotsLine(run, now), trimLine(now),
               `tokens emitted this step: ${now.emitted.length}; output so far: `
               + `${plural(req.outputTokenIds.length, 'token')}`);
    if (now.finished) {
      lines.push(`request ${RID} finished (${now.finished.reason}) after ${plural(now.finished.tokens, 'token')}`);
    }
  } else {
    lines.push(`request ${RID} has not arrived yet`);
  }
  lines.push(compareLine(run));
  return lines;
}

// -- what the pictures show -------------------------------------------------------------

// The verifying pass as rows: row i takes `input` (the known token, then each draft),
// the target picks `choice`, which is checked against draft i. `kind`: acc, bonus, fix
// or unused.
export function verifyRows(run, v) {
  const bonus = v.accepted === v.drafts.length;
  const rows = [];
  for (let i = 0; i <= v.drafts.length; i++) {
    const input = shown(run, i === 0 ? v.known : v.drafts[i - 1]);
    const checked = i < v.drafts.length ? shown(run, v.drafts[i]) : '— (past the last draft)';
    let choice;
    let verdict;
    if (i < v.accepted) {
      choice = shown(run, v.drafts[i]);
      verdict = 'same: draft accepted';
    } else if (i === v.accepted) {
      choice = shown(run, v.tokens[i]);
      verdict = bonus ? 'every draft accepted: bonus token' : 'differs: draft rejected, target\'s token instead';
    } else {
      choice = '—';
      verdict = 'not used (after the first rejection)';
    }
    const kind = i < v.accepted ? 'acc' : i === v.accepted ? (bonus ? 'bonus' : 'fix') : 'unused';
    rows.push({kind, input, choice, checked, verdict});
  }
  return rows;
}

// The request's blocks a verification wrote into, from the block of its known token on,
// slot by slot: {id, logical, trimmed, cells: [{kind, text, label}]}. `first` is that
// first logical block. Blocks in `gone` were trimmed after the pass.
export function slotBlocks(run, v, gone) {
  const {bs} = run;
  const first = Math.floor(v.start / bs);
  const end = v.start + v.drafts.length;
  const cell = (p) => {
    if (p < v.start) return {kind: 'ctx', text: '', label: 'an earlier token'};
    if (p === v.start) {
      return {kind: 'known', text: shown(run, v.known),
              label: `the known token ${JSON.stringify(textOf(run, v.known))}`};
    }
    if (p <= end) {
      const i = p - v.start - 1;
      const ok = i < v.accepted;
      return {kind: ok ? 'acc' : 'rej', text: shown(run, v.drafts[i]),
              label: `draft ${i + 1} ${JSON.stringify(textOf(run, v.drafts[i]))}, ${ok ? 'accepted' : 'rejected'}`};
    }
    return {kind: 'unused', text: '', label: 'not written at this step'};
  };
  const blocks = [];
  for (let b = first; b < v.table.length; b++) {
    const cells = [];
    for (let j = 0; j < bs; j++) {
      const p = b * bs + j;
      const c = cell(p);
      cells.push({...c, label: `position ${p}: ${c.label}`});
    }
    blocks.push({id: v.table[b], logical: b, trimmed: gone.has(v.table[b]), cells});
  }
  return {first, blocks};
}

// What the chart of verifying passes says, for its label and the note under it.
export function chartSummary(req) {
  const seen = req.verifications;
  const latest = seen.at(-1);
  return seen.length
    ? `${seen.length} verifying ${seen.length === 1 ? 'pass' : 'passes'} so far: ${req.draftTokens} drafts, ${req.acceptedTokens} `
      + `accepted. Latest, step ${latest.step}: ${latest.draftTokenIds.length} drafted, ${latest.numAccepted} `
      + 'accepted. Each bar: accepted drafts (green), rejected drafts (red) and the target\'s token '
      + '(blue: bonus, orange: correction).'
    : 'No verifying pass yet.';
}

// Pool size for a run: the prompt, the answer and one step's draft slots, with room to spare.
export function poolBlocks(promptTokens, blockSize, maxTokens, drafts) {
  const room = Math.ceil(promptTokens / blockSize) + Math.ceil((maxTokens + drafts + 1) / blockSize) + 4;
  return Number.isFinite(room) ? Math.max(8, Math.min(512, room)) : 64;
}
