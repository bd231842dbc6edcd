import '../chrome.js';
import {$, h, replace, svg, pct} from '../dom.js';
import {postJSON} from '../api.js';
import {PoolGrid, poolLegend, plural} from '../views.js';
import {emptyState, applyEvent} from '../state.js';
import {labForm, playerFor, loadRun, num, emptyReadout} from '../lab.js';

const RID = '0';  // the lab names its one prompt's request "0"
const pool = new PoolGrid($('#pool'), {label: 'KV pool', legend: false});
$('#pool').prepend(poolLegend({highlight: 'trimmed at this step'}));
let run = null;  // the loaded run, analysed once (see analyse)

// -- the form ---------------------------------------------------------------------------

const method = () => document.querySelector('input[name="method"]:checked').value;
function showMethodOptions() {
  const ngram = method() === 'ngram';
  $('#lookup-label').hidden = !ngram;
  $('#layers-label').hidden = ngram;
}
for (const radio of document.querySelectorAll('input[name="method"]')) {
  radio.addEventListener('change', showMethodOptions);
}
showMethodOptions();

const k = $('#k');
const sayK = () => {
  $('#k-out').textContent = k.value;
  k.setAttribute('aria-valuetext', `${plural(Number(k.value), 'draft')} per step`);
};
k.addEventListener('input', sayK);
sayK();

// -- what the run says, step by step ----------------------------------------------------

// One record per engine step: the verification of request 0's drafts (with the token
// it computed from, the position of that token and its block table at that moment), the
// blocks trimmed (before the pass: scratch slots the early-exit draft borrowed; after it: blocks that
// held only rejected drafts), the tokens emitted, and the step's end. Each carries its
// event index, so a position in the middle of a step shows only what happened so far.
function analyse(data, body) {
  const {events} = data;
  const steps = new Map();
  const passes = [];
  const state = emptyState();
  const at = (step) => {
    if (!steps.has(step)) steps.set(step, {verify: null, trims: [], emitted: [], end: null, finished: null});
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
  const spec = body.speculative_config;
  return {
    events, steps, passes, spec,
    bs: events[0].block_size,
    numLayers: events[0].num_layers,
    texts: new Map(Object.entries(data.token_texts ?? {}).map(([id, text]) => [Number(id), text])),
    output: data.outputs[0],
    plain: data.plain ? data.plain.outputs[0] : null,
  };
}

// What step `step` did up to event position `pos`.
function stepSoFar(step, pos) {
  const r = run.steps.get(step) ?? {verify: null, trims: [], emitted: [], end: null, finished: null};
  const before = (x) => (x && x.index < pos ? x : null);
  return {
    verify: before(r.verify),
    trims: r.trims.filter((t) => t.index < pos),
    emitted: r.emitted.filter((t) => t.index < pos),
    end: before(r.end),
    finished: before(r.finished),
  };
}

const textOf = (id) => (run.texts.has(id) ? run.texts.get(id) : `#${id}`);
const quoted = (ids) => ids.map((id) => JSON.stringify(textOf(id))).join(', ');
const shown = (id) => {
  const t = textOf(id).replace(/\n/g, '⏎');
  return t === '' ? '∅' : t;
};
const idList = (ids) => ids.join(', ');
const nPasses = (n) => `${n} ${n === 1 ? 'pass' : 'passes'}`;

function methodLine() {
  const {spec} = run;
  if (spec.method === 'ngram') {
    return `method: n-gram lookup, k = ${spec.num_speculative_tokens}, longest n-gram ${spec.prompt_lookup_max}`;
  }
  const layers = spec.draft_layers ?? Math.floor(run.numLayers / 2);
  return `method: early-exit self-draft, k = ${spec.num_speculative_tokens}, drafts from the first `
    + `${layers} of ${run.numLayers} layers`;
}

function verdictLine(step, now) {
  const v = now.verify;
  if (v) {
    const bonus = v.accepted === v.drafts.length;
    return `step ${step}: drafted ${v.drafts.length} (${quoted(v.drafts)}), accepted ${v.accepted}, `
      + `target added 1 (${bonus ? 'bonus' : 'correction'} ${JSON.stringify(textOf(v.tokens.at(-1)))})`;
  }
  const chunk = now.end?.chunk;
  if (!now.end) return `step ${step}: nothing verified yet`;
  if (!chunk) return `step ${step}: request ${RID} not in the batch`;
  if (chunk.phase === 'prefill') return `step ${step}: prefill of ${chunk.num_tokens} prompt tokens, no drafts`;
  return `step ${step}: no drafts, a plain decode of 1 token`;
}

function runLine(req) {
  const done = req.verifications;
  if (!done.length) return 'run so far: no verifying pass yet';
  const made = done.reduce((sum, v) => sum + v.tokenIds.length, 0);
  return `run so far: ${req.draftTokens} drafted, ${req.acceptedTokens} accepted `
    + `(${pct(req.acceptedTokens / req.draftTokens)}), ${(made / done.length).toFixed(2)} tokens `
    + `per verifying pass (${nPasses(done.length)})`;
}

// The positions of the drafts of a verification and the blocks those slots are in.
function draftSlots(v) {
  const positions = v.drafts.map((_, i) => v.start + 1 + i);
  const blocks = [...new Set(positions.map((p) => v.table[Math.floor(p / run.bs)]))];
  return {positions, blocks};
}

function slotsLine(now) {
  const v = now.verify;
  if (!v) return 'draft KV slots this step: none';
  const {positions, blocks} = draftSlots(v);
  const where = positions.length === 1 ? `position ${positions[0]}`
    : `positions ${positions[0]}–${positions.at(-1)}`;
  return `draft KV slots this step: ${positions.length} (${where}) in `
    + `${blocks.length === 1 ? 'block' : 'blocks'} ${idList(blocks)}`;
}

function trimmed(now) {
  const empty = now.trims.filter((t) => !t.rejected).flatMap((t) => t.blocks);
  const rejected = now.trims.filter((t) => t.rejected).flatMap((t) => t.blocks);
  return {empty, rejected, all: [...empty, ...rejected]};
}

function trimLine(now) {
  const {empty, rejected, all} = trimmed(now);
  if (!all.length) return 'blocks trimmed this step: none';
  const parts = [];
  if (empty.length) parts.push(`${idList(empty)}: slots the draft passes borrowed`);
  if (rejected.length) parts.push(`${idList(rejected)}: only rejected drafts`);
  return `blocks trimmed this step: ${all.length} (${parts.join('; ')})`;
}

// The first position where two token lists differ (null: identical).
function firstDifference(a, b) {
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return null;
}

function compareLine() {
  if (!run.plain) return 'plain greedy run without speculation: not run';
  const a = run.output.token_ids;
  const b = run.plain.token_ids;
  const at = firstDifference(a, b);
  return at === null
    ? `plain greedy run without speculation: identical token ids (${plural(a.length, 'token')})`
    : `plain greedy run without speculation: differs from token ${at} on (speculative ${a.length} `
      + `tokens, plain ${b.length})`;
}

// -- pictures ----------------------------------------------------------------------------

function drawStrip(now) {
  const v = now.verify;
  if (!v) {
    replace($('#strip'), h('li', {class: 'note'}, 'No drafts verified at this step.'));
    replace($('#rows tbody'));
    return;
  }
  const bonus = v.accepted === v.drafts.length;
  const target = v.tokens.at(-1);
  replace($('#strip'),
    h('li', {class: 'tok known', 'aria-label': `known token ${JSON.stringify(textOf(v.known))}`},
      h('span', {class: 'what'}, 'known'), h('span', {class: 't'}, shown(v.known))),
    v.drafts.map((id, i) => {
      const ok = i < v.accepted;
      return h('li', {class: `tok ${ok ? 'acc' : 'rej'}`,
                      'aria-label': `draft ${i + 1} ${JSON.stringify(textOf(id))}: ${ok ? 'accepted' : 'rejected'}`},
        h('span', {class: 'what'}, `draft ${i + 1} ${ok ? '✓' : '✕'}`), h('span', {class: 't'}, shown(id)));
    }),
    h('li', {class: `tok ${bonus ? 'bonus' : 'fix'}`,
             'aria-label': `the target's ${bonus ? 'bonus' : 'correction'} ${JSON.stringify(textOf(target))}`},
      h('span', {class: 'what'}, bonus ? 'bonus' : 'correction'), h('span', {class: 't'}, shown(target))));
  const rows = [];
  for (let i = 0; i <= v.drafts.length; i++) {
    const input = i === 0 ? v.known : v.drafts[i - 1];
    const checked = i < v.drafts.length ? shown(v.drafts[i]) : '— (past the last draft)';
    let choice;
    let verdict;
    if (i < v.accepted) {
      choice = shown(v.drafts[i]);
      verdict = 'same: draft accepted';
    } else if (i === v.accepted) {
      choice = shown(v.tokens[i]);
      verdict = bonus ? 'every draft accepted: bonus token' : 'differs: draft rejected, target\'s token instead';
    } else {
      choice = '—';
      verdict = 'not used (after the first rejection)';
    }
    rows.push(h('tr', {class: i < v.accepted ? 'acc' : i === v.accepted ? (bonus ? 'bonus' : 'fix') : 'unused'},
      h('td', {}, String(i)), h('td', {class: 'tokcell'}, shown(input)), h('td', {class: 'tokcell'}, choice),
      h('td', {class: 'tokcell'}, checked), h('td', {class: 'wrap'}, verdict)));
  }
  replace($('#rows tbody'), rows);
}

// The request's blocks this step wrote into, one cell per slot.
function drawSlots(now, trimmedNow) {
  const v = now.verify;
  if (!v) {
    replace($('#slots'), h('p', {class: 'note'}, trimmedNow.length
      ? `No drafts at this step; trimmed blocks: ${idList(trimmedNow)}.` : 'No drafts at this step.'));
    return;
  }
  const {bs} = run;
  const blocks = v.table;
  const first = Math.floor(v.start / bs);
  const end = v.start + v.drafts.length;
  // blocks given back after the pass (only rejected drafts); scratch slots of the
  // early-exit draft were given back before the step was scheduled, not from this table
  const gone = new Set(trimmed(now).rejected);
  const items = [];
  for (let b = first; b < blocks.length; b++) {
    const id = blocks[b];
    const cells = [];
    for (let j = 0; j < bs; j++) {
      const p = b * bs + j;
      let cls;
      let text = '';
      let label;
      if (p < v.start) {
        cls = 'ctx';
        label = 'an earlier token';
      } else if (p === v.start) {
        cls = 'known';
        text = shown(v.known);
        label = `the known token ${JSON.stringify(textOf(v.known))}`;
      } else if (p <= end) {
        const i = p - v.start - 1;
        const ok = i < v.accepted;
        cls = ok ? 'acc' : 'rej';
        text = shown(v.drafts[i]);
        label = `draft ${i + 1} ${JSON.stringify(textOf(v.drafts[i]))}, ${ok ? 'accepted' : 'rejected'}`;
      } else {
        cls = 'unused';
        label = 'not written at this step';
      }
      const full = `position ${p}: ${label}`;
      cells.push(h('li', {class: `slot ${cls}`, title: full, 'aria-label': full}, text));
    }
    const note = gone.has(id) ? ', trimmed at this step' : '';
    items.push(h('li', {class: `spec-block${gone.has(id) ? ' trimmed' : ''}`},
      h('span', {class: 'name'}, `block ${id}${gone.has(id) ? ' · trimmed' : ''}`),
      h('ol', {'aria-label': `block ${id} (logical block ${b})${note}`}, cells)));
  }
  replace($('#slots'),
    first ? h('p', {class: 'note'}, `Logical blocks 0–${first - 1} (${plural(first, 'block')}) hold earlier tokens.`) : null,
    h('ul', {class: 'spec-blocks'}, items));
}

function drawChart(req, step) {
  const W = 600;
  const H = 130;
  const top = 16;
  const band = H - top - 16;
  const most = run.spec.num_speculative_tokens + 1;
  const bw = Math.min(48, W / Math.max(1, run.passes.length));
  const unit = band / most;
  const seen = req.verifications;
  const chart = svg('svg', {viewBox: `0 0 ${W} ${H}`, role: 'img'});
  seen.forEach((v, i) => {
    const x = i * bw + 1;
    const w = Math.max(1, bw - 2);
    const drafted = v.draftTokenIds.length;
    const base = top + band;
    chart.append(svg('rect', {x, y: base - v.numAccepted * unit, width: w, height: v.numAccepted * unit, class: 'acc'}));
    chart.append(svg('rect', {x, y: base - drafted * unit, width: w, height: (drafted - v.numAccepted) * unit, class: 'rej'}));
    const bonus = v.numAccepted === drafted;
    const y = bonus ? base - (drafted + 1) * unit : base - (v.numAccepted + 1) * unit;
    chart.append(svg('rect', {x: x + w / 4, y, width: w / 2, height: unit, class: bonus ? 'bonus' : 'fix'}));
    if (v.step === step) {
      chart.append(svg('rect', {x: x - 1, y: top - 2, width: w + 2, height: band + 4, class: 'now-box'}));
    }
  });
  chart.append(svg('text', {x: 2, y: top - 4, class: 'axis'}, `tokens per verifying pass (at most ${most})`));
  chart.append(svg('text', {x: 2, y: H - 2, class: 'axis'}, seen.length
    ? `passes 1–${seen.length} of the run's ${run.passes.length}`
    : `no pass yet (the run has ${run.passes.length})`));
  const latest = seen.at(-1);
  const summary = seen.length
    ? `${seen.length} verifying ${seen.length === 1 ? 'pass' : 'passes'} so far: ${req.draftTokens} drafts, ${req.acceptedTokens} `
      + `accepted. Latest, step ${latest.step}: ${latest.draftTokenIds.length} drafted, ${latest.numAccepted} `
      + 'accepted. Each bar: accepted drafts (green), rejected drafts (red) and the target\'s token '
      + '(blue: bonus, orange: correction).'
    : 'No verifying pass yet.';
  chart.setAttribute('aria-label', summary);
  replace($('#chart'), chart, h('p', {class: 'note'}, summary));
}

function drawOutputs() {
  const a = run.output.token_ids;
  const items = [h('li', {},
    h('span', {class: 'meta'}, `with speculative decoding, ${plural(a.length, 'token')}: `),
    h('span', {class: 'text'}, run.output.text))];
  if (run.plain) {
    items.push(h('li', {},
      h('span', {class: 'meta'}, `the target alone, ${plural(run.plain.token_ids.length, 'token')}: `),
      h('span', {class: 'text'}, run.plain.text)));
    const at = firstDifference(a, run.plain.token_ids);
    $('#same').textContent = at === null
      ? `Identical token ids: the server ran the prompt again without speculation and all `
        + `${plural(a.length, 'token')} came out the same.`
      : `The two runs differ from token ${at} on.`;
  } else {
    $('#same').textContent = '';
  }
  replace($('#outputs'), items);
}

function render(state, timeline) {
  if (!state.engine || !run) {
    $('#readout').textContent = emptyReadout(timeline);
    return;
  }
  const step = timeline.lastEvent ? state.step : 0;
  const now = stepSoFar(step, timeline.pos);
  const req = state.requests[RID];
  const cut = trimmed(now).all;
  pool.update(state, {highlight: new Set(cut)});
  drawStrip(now);
  drawSlots(now, cut);
  $('#step-line').textContent = verdictLine(step, now);
  drawChart(req ?? {verifications: [], draftTokens: 0, acceptedTokens: 0}, step);
  const lines = [`step ${step}, event ${timeline.pos} of ${timeline.length}`, methodLine()];
  if (req) {
    lines.push(verdictLine(step, now), runLine(req), slotsLine(now), trimLine(now),
               `tokens emitted this step: ${now.emitted.length}; output so far: `
               + `${plural(req.outputTokenIds.length, 'token')}`);
    if (now.finished) {
      lines.push(`request ${RID} finished (${now.finished.reason}) after ${plural(now.finished.tokens, 'token')}`);
    }
  } else {
    lines.push(`request ${RID} has not arrived yet`);
  }
  lines.push(compareLine());
  $('#readout').textContent = lines.join('\n');
}

const player = playerFor($('#player'), render, {label: 'Speculative decoding run'});

// The prompt: the text alone, or wrapped in the model's chat template by the server.
async function promptOf() {
  const text = $('#prompt').value;
  if (!$('#chat').checked) {
    const {count} = await postJSON('/tokenize', {prompt: text});
    return {prompt: text, count};
  }
  const {tokens, count} = await postJSON('/tokenize', {messages: [{role: 'user', content: text}]});
  const {prompt} = await postJSON('/detokenize', {tokens});
  return {prompt, count};
}

const go = labForm($('#lab'), async () => {
  const {prompt, count} = await promptOf();
  const drafts = num('#k');
  const bs = num('#block-size');
  const maxTokens = num('#max-tokens');
  const spec = {method: method(), num_speculative_tokens: drafts};
  if (spec.method === 'ngram') spec.prompt_lookup_max = num('#lookup-max');
  else spec.draft_layers = num('#draft-layers');
  // room for the prompt, the answer and one step's draft slots
  const room = Math.ceil(count / bs) + Math.ceil((maxTokens + drafts + 1) / bs) + 4;
  $('#prompt-text').textContent = prompt;
  return {
    prompts: [prompt],
    max_tokens: maxTokens,
    block_size: bs,
    num_blocks: Number.isFinite(room) ? Math.max(8, Math.min(512, room)) : 64,
    enable_prefix_caching: false,
    ignore_eos: false,
    temperature: 0,
    speculative_config: spec,
    compare_plain: true,
  };
}, (data, body) => {
  run = analyse(data, body);
  drawOutputs();
  // open after the first verifying pass
  const first = run.passes[0];
  const timeline = loadRun(player, data.events, 0);
  player.seek(first ? timeline.stopOfStep(first.step) : timeline.stops[0] ?? timeline.length);
});
go();
