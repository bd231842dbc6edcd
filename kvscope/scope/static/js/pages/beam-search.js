import '../chrome.js';
import {$, h, replace, svg} from '../dom.js';
import {postJSON, showError} from '../api.js';
import {liveBeams, beamColumns} from '../state.js';
import {PoolGrid, drawBlockTables, poolLegend, plural} from '../views.js';
import {labForm, playerFor, loadRun, num, emptyReadout, chatPrompt} from '../lab.js';
import {GROUP, fixed2, textOf, beamTokens, prunedSoFar, thisStep, nodeLabel, treeSummary, nodeTitle,
  readoutLines, openingStop, poolBlocks} from '../logic/beam-search.js';

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

// Turn every token the search produced into text, one token at a time.
async function fetchTexts(events) {
  const missing = [...beamTokens(events)].filter((id) => !texts.has(id));
  try {
    const got = await Promise.all(missing.map((id) => postJSON('/detokenize', {tokens: [id]})));
    missing.forEach((id, i) => texts.set(id, got[i].prompt));
  } catch (err) {
    showError($('#error'), 'Turning tokens back into text', err);
  }
}

// -- the tree: one column per beam step -----------------------------------------------

const COL = 112;
const ROW = 46;
const NODE_W = 92;
const NODE_H = 36;
const TOP = 20;

function drawTree(state, pruned) {
  const columns = beamColumns(state.beamSearches[GROUP] ?? []);
  const rows = Math.max(1, ...columns.map((c) => c.length));
  const W = 16 + COL * (columns.length + 1);
  const H = TOP + ROW * rows + 4;
  const y = (j) => TOP + j * ROW + (ROW - NODE_H) / 2;
  const x = (i) => 8 + COL * (i + 1);  // column -1 is the prompt
  const summary = treeSummary(columns, liveBeams(state, GROUP), pruned);
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
    const title = nodeTitle(texts, i, n);
    const g = node(x(i), y(j), cls, nodeLabel(texts, n.token), `${n.id} ${fixed2(n.score)}`, title);
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

function drawFinished(record) {
  const done = record?.done;
  if (done) {
    replace($('#finished'), run.completions.map((c) => h('li', {},
      h('span', {class: 'meta'}, `log-probability ${fixed2(c.cumulative_logprob)}, ${c.finish_reason}: `),
      h('span', {class: 'text'}, c.text))));
  } else if (record?.finished.length) {
    replace($('#finished'), record.finished.map((f) => h('li', {},
      h('span', {class: 'meta'}, `score ${fixed2(f.score)}, ${f.finish_reason}: `),
      h('span', {class: 'text'}, textOf(texts, f.token_ids)))));
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
  pool.update(state, {highlight: new Set(thisStep(state, timeline).back)});
  drawBlockTables($('#tables'), state, liveBeams(state, GROUP).map((b) => b.id), {shared: true});
  drawTree(state, prunedSoFar(state));
  drawFinished(records[records.length - 1]);
  $('#readout').textContent = readoutLines(run, texts, state, timeline).join('\n');
}

const player = playerFor($('#player'), render, {label: 'Beam search run'});

const go = labForm($('#lab'), async () => {
  const {prompt, count} = await chatPrompt($('#question').value, $('#chat').checked);
  const beams = num('#width');
  const bs = num('#block-size');
  const maxTokens = num('#max-tokens');
  $('#prompt-text').textContent = prompt;
  return {
    prompts: [prompt],
    beam_width: beams,
    max_tokens: maxTokens,
    length_penalty: num('#length-penalty'),
    ignore_eos: false,
    block_size: bs,
    num_blocks: poolBlocks(count, bs, maxTokens, beams),
    enable_prefix_caching: false,
  };
}, async (data, body) => {
  run = {width: body.beam_width, lengthPenalty: body.length_penalty,
         completions: data.outputs[0].completions};
  player.seek(openingStop(loadRun(player, data.events, 0)));
  await fetchTexts(data.events);
  player.seek(player.timeline.pos);  // redraw with the token texts
});
go();
