import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {API, getJSON} from '../api.js';
import {labForm, num} from '../lab.js';
import {Stepper} from '../stepper.js';
import {list, phaseCount, phaseName, readoutLines, limitsText} from '../logic/attention-math.js';

let data = null;
let phase = 0;

const numBlocks = () => data.blocks.length;

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

function show(p) {
  phase = p;
  drawContext();
  drawWork();
  $('#readout').textContent = readoutLines(data, phase).join('\n');
}

const stepper = new Stepper($('[data-stepper="phase"]'), show);
$('#readout').textContent = 'No result yet.';

const go = labForm($('#lab'), () => ({
  prompt: $('#prompt').value,
  layer: num('#layer'),
  head: num('#head'),
  block_size: num('#block-size'),
  position: num('#position'),
}), (response) => {
  data = response;
  stepper.load(phaseCount(data), (p) => phaseName(data, p));
}, {path: 'lab/attention', label: 'Computing the attention'});

try {
  const info = await getJSON(`${API}/info`);
  const e = info.engine;
  $('#layer').max = String(e.num_layers - 1);
  if (e.num_heads) $('#head').max = String(e.num_heads - 1);
  $('#limits').textContent = limitsText(e);
} catch { /* the limits are a convenience; the server checks every value */ }
go();
