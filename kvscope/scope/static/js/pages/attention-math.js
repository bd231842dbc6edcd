import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {API, getJSON} from '../api.js';
import {labForm, num} from '../lab.js';

let data = null;
let phase = 0;
const slider = $('#phase');

const list = (xs) => xs.map(String).join(', ');
const numBlocks = () => data.blocks.length;
const lastPhase = () => numBlocks() + 1;

function phaseName(p) {
  if (p < numBlocks()) return `block ${p + 1} of ${numBlocks()}`;
  if (p === numBlocks()) return `softmax over all ${data.weights.length} scores`;
  return 'weighted sum of values';
}

function bar(value, max, label) {
  const width = max > 0 ? Math.max(0, (100 * value) / max) : 0;
  return h('div', {class: 'track', role: 'img', 'aria-label': label},
    h('div', {class: 'fill', style: {width: `${width}%`}}));
}

function drawContext() {
  const visible = data.position + 1;
  replace($('#blocks'), data.blocks.map((b) => h('li', {
    class: `blk${phase === b.index ? ' current' : ''}`,
    'aria-current': phase === b.index ? 'step' : null,
  },
  h('span', {class: 'meta'}, `logical ${b.index} → physical ${b.block_id}, positions ${b.start}–${b.end - 1}`),
  data.tokens.slice(b.start, b.end).map((t) => h('span', {class: 'tok'}, t)))),
  visible < data.tokens.length ? h('li', {class: 'blk'},
    h('span', {class: 'meta'}, 'after the query: not attended'),
    h('span', {class: 'tok note'}, data.tokens.slice(visible).join(''))) : null);
}

function drawWork() {
  const work = $('#work');
  if (phase < numBlocks()) {
    const b = data.blocks[phase];
    const top = Math.max(...b.scores.map(Math.abs), 1e-9);
    replace(work,
      h('p', {}, `Reading physical block ${b.block_id} (logical ${b.index}). Scores are q·k × ${data.scale}.`),
      h('div', {class: 'table-wrap'}, h('table', {class: 'data'},
        h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'Position'), h('th', {scope: 'col'}, 'Token'),
          h('th', {scope: 'col'}, 'Score'), h('th', {scope: 'col'}, '|score|'))),
        h('tbody', {}, b.scores.map((s, j) => h('tr', {},
          h('td', {}, String(b.start + j)), h('td', {}, JSON.stringify(data.tokens[b.start + j])),
          h('td', {}, String(s)), h('td', {style: {minWidth: '6rem'}}, bar(Math.abs(s), top, `score ${s}`))))))),
      h('dl', {class: 'stats'},
        h('div', {}, h('dt', {}, 'block max'), h('dd', {}, String(b.block_max))),
        h('div', {}, h('dt', {}, 'Σ exp(score − block max)'), h('dd', {}, String(b.block_sum_exp))),
        h('div', {}, h('dt', {}, 'running max (online)'), h('dd', {}, String(b.running_max))),
        h('div', {}, h('dt', {}, 'running Σ exp (online)'), h('dd', {}, String(b.running_sum_exp)))));
  } else if (phase === numBlocks()) {
    const last = data.blocks[numBlocks() - 1];
    const top = Math.max(...data.weights);
    replace(work,
      h('p', {}, `One softmax over every score: subtract the largest (${last.running_max}), `
        + `exponentiate, divide by the sum (${last.running_sum_exp}). The weights add up to 1.`),
      h('div', {class: 'table-wrap'}, h('table', {class: 'data'},
        h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'Position'), h('th', {scope: 'col'}, 'Token'),
          h('th', {scope: 'col'}, 'Weight'), h('th', {scope: 'col'}, ''))),
        h('tbody', {}, data.weights.map((w, i) => h('tr', {},
          h('td', {}, String(i)), h('td', {}, JSON.stringify(data.tokens[i])), h('td', {}, String(w)),
          h('td', {style: {minWidth: '6rem'}}, bar(w, top, `weight ${w}`))))))));
  } else {
    const show = (name, v) => h('div', {},
      h('h3', {}, `${name} (first 8 of ${v.length})`), h('p', {class: 'vector'}, list(v.slice(0, 8))));
    replace(work,
      h('p', {}, 'Σ weight × value, summed block by block, next to the same attention done in one '
        + 'pass (online softmax) and over a contiguous copy of the keys and values.'),
      show('block-wise output', data.output_blockwise),
      show('online (one pass) output', data.output_online),
      show('contiguous output', data.output_contiguous),
      h('dl', {class: 'stats'},
        h('div', {}, h('dt', {}, 'max |block-wise − contiguous|'), h('dd', {id: 'diff'}, String(data.max_abs_diff))),
        h('div', {}, h('dt', {}, 'max |online − block-wise|'), h('dd', {}, String(data.max_abs_diff_online)))));
  }
}

function readout() {
  const lines = [
    `prompt: ${data.tokens.length} tokens; query position ${data.position} `
      + `(${JSON.stringify(data.tokens[data.position])}), layer ${data.layer}, head ${data.head} `
      + `(KV head ${data.kv_head}), head dim ${data.head_dim}, scale ${data.scale}`,
    `block size ${data.block_size}, block table [${list(data.block_table)}]`,
    `phase: ${phaseName(phase)}`,
  ];
  if (phase < numBlocks()) {
    const b = data.blocks[phase];
    lines.push(`logical block ${b.index} → physical block ${b.block_id}, positions ${b.start}–${b.end - 1}`,
      `scores: ${list(b.scores)}`,
      `block max: ${b.block_max}`,
      `block sum exp: ${b.block_sum_exp}`,
      `running max: ${b.running_max}, running sum exp: ${b.running_sum_exp}`);
  } else if (phase === numBlocks()) {
    const last = data.blocks[numBlocks() - 1];
    lines.push(`max over blocks: ${last.running_max}`, `sum of exp: ${last.running_sum_exp}`,
      `weights: ${list(data.weights)}`);
  } else {
    lines.push(`output block-wise (first 8): ${list(data.output_blockwise.slice(0, 8))}`,
      `output contiguous (first 8): ${list(data.output_contiguous.slice(0, 8))}`,
      `max abs diff, block-wise vs contiguous: ${data.max_abs_diff}`,
      `max abs diff, online vs block-wise: ${data.max_abs_diff_online}`);
  }
  $('#readout').textContent = lines.join('\n');
}

function show(p) {
  if (!data) return;
  phase = Math.max(0, Math.min(lastPhase(), p));
  slider.max = String(lastPhase());
  slider.value = String(phase);
  const text = `step ${phase + 1} of ${lastPhase() + 1}: ${phaseName(phase)}`;
  slider.setAttribute('aria-valuetext', text);
  $('#phase-text').textContent = text;
  $('#prev').disabled = phase === 0;
  $('#next').disabled = phase === lastPhase();
  drawContext();
  drawWork();
  readout();
}

$('#prev').addEventListener('click', () => show(phase - 1));
$('#next').addEventListener('click', () => show(phase + 1));
slider.addEventListener('input', () => show(Number(slider.value)));
$('#phase-text').textContent = 'Compute attention to begin.';
$('#readout').textContent = 'No result yet.';

const go = labForm($('#lab'), () => ({
  prompt: $('#prompt').value,
  layer: num('#layer'),
  head: num('#head'),
  block_size: num('#block-size'),
  position: num('#position'),
}), (response) => {
  data = response;
  show(0);
}, {path: 'lab/attention', label: 'Computing the attention'});

try {
  const info = await getJSON(`${API}/info`);
  const e = info.engine;
  $('#layer').max = String(e.num_layers - 1);
  const heads = e.num_heads ?? null;
  if (heads) $('#head').max = String(heads - 1);
  $('#limits').textContent = `The loaded model has ${e.num_layers} layers (0–${e.num_layers - 1})`
    + (heads ? `, ${heads} query heads (0–${heads - 1})` : '')
    + ` sharing ${e.num_kv_heads} KV heads of dimension ${e.head_dim}.`;
} catch { /* the limits are a convenience; the server checks every value */ }
go();
