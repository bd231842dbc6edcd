import '../chrome.js';
import {$, h, replace, svg} from '../dom.js';
import {postJSON, showError} from '../api.js';
import {poolSummary, liveBeams, beamColumns, endedInto} from '../state.js';
import {PoolGrid, drawBlockTables, poolLegend, plural} from '../views.js';
import {labForm, playerFor, loadRun, num, emptyReadout} from '../lab.js';

const GROUP = '0';  // the lab names its one prompt's request "0": the beam search's id
const pool = new PoolGrid($('#pool'), {label: 'KV pool', legend: false, refcounts: true});
$('#pool').prepend(poolLegend({highlight: 'freed by pruning at this step'}));
const texts = new Map();  // token id -> its text, from the server's tokenizer
let run = null;  // the loaded run: events, what was asked, the API's final beams

const width = $('#width');
const sayWidth = () => {
  $('#width-out').textContent = width.value;
  width.setAttribute('aria-valuetext', plural(Number(width.value), 'beam'));
};
width.addEventListener('input', sayWidth);
sayWidth();

const fixed2 = (x) => (x === null || x === undefined ? '—' : x.toFixed(2));
const textOf = (ids) => ids.map((id) => (texts.has(id) ? texts.get(id) : `[${id}]`)).join('');

// Turn every token the search produced into text, one token at a time.
async function fetchTexts(events) {
  const wanted = new Set();
  for (const e of events) {
    if (e.kind !== 'beam_step') continue;
    for (const b of e.beams) wanted.add(b.token_id);
    for (const f of e.finished) for (const id of f.token_ids) wanted.add(id);
  }
  const missing = [...wanted].filter((id) => !texts.has(id));
  try {
    const got = await Promise.all(missing.map((id) => postJSON('/detokenize', {tokens: [id]})));
    missing.forEach((id, i) => texts.set(id, got[i].prompt));
  } catch (err) {
    showError($('#error'), 'Turning tokens back into text', err);
  }
}

// Whether pruned beam `rid` was retired because its candidate ended (and was kept among
// the finished answers) rather than beaten: the beam step of the step it left says so.
function ended(state, rid) {
  const req = state.requests[rid];
  const record = (state.beamSearches[GROUP] ?? []).find((r) => r.step === req.finishedStep);
  return endedInto(record, req.outputTokenIds);
}

const prunedName = (state, rid) => (ended(state, rid) ? `${rid} (ended: joined the finished list)` : rid);

// What happened in the current step so far: forks, and prunes with the blocks they let go.
function thisStep(state, timeline) {
  const {events, pos} = timeline;
  const forked = [];
  const pruned = [];
  for (let i = 0; i < pos; i++) {
    const e = events[i];
    if (e.step !== state.step) continue;
    if (e.kind === 'sequence_forked') forked.push(e);
    if (e.kind === 'request_finished' && e.reason === 'pruned') {
      let freed = null;
      for (let j = i - 1; j >= 0 && !freed; j--) {
        if (events[j].kind === 'blocks_freed' && events[j].request_id === e.request_id) freed = events[j];
      }
      pruned.push({id: e.request_id, released: freed ? freed.block_ids : []});
    }
  }
  const back = [];
  for (const p of pruned) {
    for (const id of p.released) if (state.blocks[id].ref === 0 && !back.includes(id)) back.push(id);
  }
  return {forked, pruned, back};
}

// -- the tree: one column per beam step -----------------------------------------------

const COL = 112;
const ROW = 46;
const NODE_W = 92;
const NODE_H = 36;
const TOP = 20;

function label(token) {
  if (!texts.has(token)) return `#${token}`;
  const t = texts.get(token).replace(/\n/g, '⏎');
  return t.length > 11 ? `${t.slice(0, 10)}…` : t;
}

function drawTree(state, prunedSoFar) {
  const columns = beamColumns(state.beamSearches[GROUP] ?? []);
  const rows = Math.max(1, ...columns.map((c) => c.length));
  const W = 16 + COL * (columns.length + 1);
  const H = TOP + ROW * rows + 4;
  const y = (j) => TOP + j * ROW + (ROW - NODE_H) / 2;
  const x = (i) => 8 + COL * (i + 1);  // column -1 is the prompt
  const live = liveBeams(state, GROUP);
  const summary = columns.length
    ? `Beam tree after ${plural(columns.length, 'beam step')}: ${live.length
      ? `live beams, best first: ${live.map((b) => b.id).join(', ')}` : 'no beam is running'}; `
      + `${plural(prunedSoFar.length, 'beam')} pruned so far.`
    : 'No beam step yet: the prompt is being computed.';
  const root = svg('svg', {width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: 'tree',
                           role: 'img', 'aria-label': summary});
  const node = (cx, cy, cls, line1, line2, title) => {
    const g = svg('g', {class: `node ${cls}`});
    g.append(svg('title', {}, title));
    g.append(svg('rect', {x: cx, y: cy, width: NODE_W, height: NODE_H, rx: 4}));
    g.append(svg('text', {x: cx + 5, y: cy + 15}, line1));
    if (line2) g.append(svg('text', {x: cx + 5, y: cy + 29, class: 'score'}, line2));
    return g;
  };
  const edge = (i0, j0, i1, j1, dead) => {
    const x0 = x(i0) + NODE_W;
    const y0 = y(j0) + NODE_H / 2;
    const x1 = x(i1);
    const y1 = y(j1) + NODE_H / 2;
    const mid = (x0 + x1) / 2;
    return svg('path', {d: `M${x0},${y0} C${mid},${y0} ${mid},${y1} ${x1},${y1}`,
                        class: `edge${dead ? ' dead' : ''}`});
  };
  if (columns.length) {
    root.append(svg('rect', {x: x(columns.length - 1) - 6, y: 0, width: NODE_W + 12, height: H,
                             class: 'now-band'}));
  }
  columns.forEach((col, i) => {
    root.append(svg('text', {x: x(i), y: 12, class: 'axis'}, `step ${i}`));
    col.forEach((n, j) => root.append(edge(i - 1, i === 0 ? 0 : n.parent, i, j,
                                            n.children === 0 && !n.ended)));
  });
  root.append(node(x(-1), y(0), 'root', 'prompt', null, 'the prompt, computed once'));
  columns.forEach((col, i) => col.forEach((n, j) => {
    const dropped = n.children === 0 && !n.ended;
    const cls = [n.forked ? 'forked' : '', dropped ? 'pruned' : ''].join(' ');
    let what = n.children === 0 ? ', pruned at the next step'
      : n.children > 1 ? `, continued by ${n.children} beams` : '';
    if (n.ended) what += '; its candidate at the next step ended and joined the finished list';
    const title = `step ${i}: beam ${n.id}${n.forked ? ' (forked)' : ''} added `
      + `${JSON.stringify(texts.get(n.token) ?? `#${n.token}`)}, score ${fixed2(n.score)}${what}`;
    const g = node(x(i), y(j), cls, label(n.token), `${n.id} ${fixed2(n.score)}`, title);
    if (n.ended) g.append(svg('text', {x: x(i) + NODE_W - 14, y: y(j) + 15, class: 'mark ended'}, '✓'));
    else if (n.children === 0) g.append(svg('text', {x: x(i) + NODE_W - 14, y: y(j) + 15, class: 'mark'}, '✕'));
    root.append(g);
  }));
  const wrap = $('#tree');
  replace(wrap, root);
  // keep the newest column in view
  const right = x(columns.length - 1) + NODE_W + 8;
  if (right > wrap.scrollLeft + wrap.clientWidth || right < wrap.scrollLeft) {
    wrap.scrollLeft = Math.max(0, right - wrap.clientWidth);
  }
}

// -- the finished list -------------------------------------------------------------------

function finishedLines(record) {
  if (!record?.finished.length) return ['finished: none yet'];
  return ['finished, best first:', ...record.finished.map((f, i) => `  ${i + 1}. score `
    + `${fixed2(f.score)}, ${f.finish_reason}, ${JSON.stringify(textOf(f.token_ids))}`)];
}

function drawFinished(record) {
  const done = record?.done;
  if (done) {
    replace($('#finished'), run.completions.map((c) => h('li', {},
      h('span', {class: 'meta'}, `log-probability ${fixed2(c.cumulative_logprob)}, ${c.finish_reason}: `),
      h('span', {class: 'text'}, c.text))));
  } else if (record?.finished.length) {
    replace($('#finished'), record.finished.map((f) => h('li', {},
      h('span', {class: 'meta'}, `score ${fixed2(f.score)}, ${f.finish_reason}: `),
      h('span', {class: 'text'}, textOf(f.token_ids)))));
  } else {
    replace($('#finished'), h('li', {class: 'note'}, 'None yet.'));
  }
}

function render(state, timeline) {
  if (!state.engine || !run) {
    $('#readout').textContent = emptyReadout(timeline);
    return;
  }
  const records = state.beamSearches[GROUP] ?? [];
  const record = records[records.length - 1];
  const step = thisStep(state, timeline);
  const live = liveBeams(state, GROUP);
  const prunedSoFar = state.order.filter((id) => state.requests[id].finishReason === 'pruned');
  pool.update(state, {highlight: new Set(step.back)});
  drawBlockTables($('#tables'), state, live.map((b) => b.id), {shared: true});
  drawTree(state, prunedSoFar);
  drawFinished(record);
  const lines = [
    `step ${timeline.lastEvent ? state.step : 0}, event ${timeline.pos} of ${timeline.length}`,
    `beam width ${run.width}, length penalty ${run.lengthPenalty}; beam steps so far: ${records.length}`,
  ];
  if (live.length) {
    lines.push('live beams, best first:');
    for (const b of live) {
      lines.push(`  ${b.id}: score ${fixed2(b.score)}, blocks [${(state.tables[b.id] ?? []).join(', ')}], `
        + `${JSON.stringify(textOf(state.requests[b.id].outputTokenIds))}`);
    }
  } else {
    lines.push('live beams: none');
  }
  lines.push(`forked at this step: ${step.forked.length
    ? step.forked.map((e) => `${e.request_id} from ${e.parent_id}`).join(', ') : 'none'}`);
  lines.push(`pruned at this step: ${step.pruned.length
    ? step.pruned.map((p) => prunedName(state, p.id)).join(', ') : 'none'}`);
  for (const p of step.pruned) {
    const back = p.released.filter((id) => step.back.includes(id));
    lines.push(`  ${p.id} let go of blocks ${p.released.join(', ')}; back in the free pool: `
      + `${back.length ? back.join(', ') : 'none'}`);
  }
  lines.push(`freed by pruning at this step: ${step.back.length ? step.back.join(', ') : 'none'}`);
  lines.push(`beams pruned so far: ${prunedSoFar.length
    ? prunedSoFar.map((id) => (ended(state, id) ? `${id} (ended)` : id)).join(', ') : 'none'}`);
  lines.push(...finishedLines(record));
  const p = poolSummary(state);
  lines.push(`free blocks: ${p.freeCount} of ${p.total}`);
  if (record?.done) {
    lines.push('final beams, best first (the API\'s output):');
    run.completions.forEach((c, i) => lines.push(`  ${i + 1}. log-probability `
      + `${fixed2(c.cumulative_logprob)}, ${c.finish_reason}, ${JSON.stringify(c.text)}`));
  }
  $('#readout').textContent = lines.join('\n');
}

const player = playerFor($('#player'), render, {label: 'Beam search run'});

// The prompt: the question alone, or wrapped in the model's chat template by the server.
async function promptOf() {
  const question = $('#question').value;
  if (!$('#chat').checked) {
    const {count} = await postJSON('/tokenize', {prompt: question});
    return {prompt: question, count};
  }
  const {tokens, count} = await postJSON('/tokenize', {messages: [{role: 'user', content: question}]});
  const {prompt} = await postJSON('/detokenize', {tokens});
  return {prompt, count};
}

const go = labForm($('#lab'), async () => {
  const {prompt, count} = await promptOf();
  const beams = num('#width');
  const bs = num('#block-size');
  const maxTokens = num('#max-tokens');
  // room for the prompt and, per beam, its own blocks and a copy being made
  const room = Math.ceil(count / bs) + beams * (Math.ceil(maxTokens / bs) + 2) + 4;
  $('#prompt-text').textContent = prompt;
  return {
    prompts: [prompt],
    beam_width: beams,
    max_tokens: maxTokens,
    length_penalty: num('#length-penalty'),
    ignore_eos: false,
    block_size: bs,
    num_blocks: Number.isFinite(room) ? Math.max(8, Math.min(512, room)) : 64,
    enable_prefix_caching: false,
  };
}, async (data, body) => {
  run = {width: body.beam_width, lengthPenalty: body.length_penalty,
         completions: data.outputs[0].completions};
  const timeline = loadRun(player, data.events, 0);
  const firstPrune = data.events.findIndex((e) => e.kind === 'request_finished' && e.reason === 'pruned');
  player.seek(firstPrune < 0 ? timeline.stops[0] ?? timeline.length
    : timeline.stops.find((s) => s > firstPrune) ?? timeline.length);
  await fetchTexts(data.events);
  player.seek(player.timeline.pos);  // redraw with the token texts
});
go();
