// The transformer-block lesson: one token's path through one decoder layer (the seven
// vector norms), the MLP's strongest neurons, and the residual stream's norm through
// every layer, all from the real forward pass. Computing is in ../logic/transformer-block.js.
import '../chrome.js';
import {$, h, svg, replace} from '../dom.js';
import {API, getJSON} from '../api.js';
import {labForm, num} from '../lab.js';
import {flowRows, largest, neuronRows, positionOptions, q, readoutLines, residualChart,
  residualSeries} from '../logic/transformer-block.js';

const layerSelect = $('#layer');
const positionSelect = $('#position');
let lastPrompt = null;

function fillLayers(count, chosen) {
  if (layerSelect.options.length === count) return;
  const keep = chosen ?? Number(layerSelect.value);
  replace(layerSelect, Array.from({length: count}, (_, i) =>
    h('option', {value: String(i), selected: i === keep}, String(i))));
}

function fillPositions(data) {
  replace(positionSelect, positionOptions(data.tokens).map((o) =>
    h('option', {value: o.value, selected: Number(o.value) === data.position}, o.text)));
}

function drawTokens(data) {
  replace($('#tokens'), data.tokens.map((t, i) => h('li', {
    class: `tok${i === data.position ? ' current' : ''}${i > data.position ? ' later' : ''}`,
    'aria-current': i === data.position ? 'true' : null,
  }, t)));
}

function drawFlow(data) {
  replace($('#flow'), flowRows(data.path).map((r) => h('li', {class: `blk-point${r.stream ? ' stream' : ''}`},
    h('div', {class: 'blk-head'},
      h('span', {class: 'blk-name'}, r.name),
      h('span', {class: 'blk-norm'}, `‖x‖ = ${r.norm}`)),
    h('p', {class: 'blk-op'}, r.op),
    h('div', {class: 'track', role: 'img', 'aria-label': `${r.name}: norm ${r.norm}`},
      h('div', {class: `fill${r.stream ? '' : ' held'}`, style: {width: `${r.width}%`}})))));
}

function drawNeurons(data) {
  const th = (text) => h('th', {scope: 'col'}, text);
  replace($('#neurons'), h('table', {class: 'data'},
    h('caption', {}, `The ${data.mlp_top.length} of ${data.intermediate_size} neurons with the largest `
      + '|silu(gate)·up| at this token'),
    h('thead', {}, h('tr', {}, th('Neuron'), th('gate'), th('up'), th('silu(gate)·up'))),
    h('tbody', {}, neuronRows(data.mlp_top).map((n) => h('tr', {},
      h('td', {}, String(n.neuron)), h('td', {}, String(n.gate)), h('td', {}, String(n.up)),
      h('td', {class: 'blk-act'}, String(n.activation),
        h('div', {class: 'track', 'aria-hidden': 'true'},
          h('div', {class: `fill blk-${n.sign}`, style: {width: `${n.width}%`}}))))))));
}

function drawStream(data) {
  const series = residualSeries(data);
  const chart = residualChart(series);
  const big = largest(series);
  const summary = `Residual stream norm at position ${data.position}: ${data.embedding_norm} after the `
    + `embedding, ${series[series.length - 1].value} after layer ${data.num_layers - 1}; largest `
    + `${big.value} (${big.label}). Layer ${data.layer} is marked.`;
  const root = svg('svg', {viewBox: `0 0 ${chart.width} ${chart.height}`, role: 'img', 'aria-label': summary});
  root.append(svg('line', {x1: chart.xLeft, x2: chart.xRight, y1: chart.baseline, y2: chart.baseline,
                           class: 'blk-axis'}));
  root.append(svg('polyline', {points: chart.line, class: 'blk-line'}));
  for (const p of chart.points) {
    const current = p.layer === data.layer;
    const dot = svg('circle', {cx: p.x, cy: p.y, r: current ? 5 : 3,
                               class: current ? 'blk-dot current' : 'blk-dot'});
    dot.append(svg('title', {}, `${p.label}: ${p.value}`));
    root.append(dot);
    if (p.at === 0 || p.layer === data.layer || p.layer === data.num_layers - 1 || (p.layer + 1) % 10 === 0) {
      root.append(svg('text', {x: p.x, y: chart.height - 8, class: 'axis', 'text-anchor': 'middle'},
        p.at === 0 ? 'emb' : String(p.layer)));
    }
  }
  root.append(svg('text', {x: 2, y: 10, class: 'axis'}, `norm (max ${chart.maxValue})`));
  replace($('#stream'), root, h('p', {class: 'note'}, summary));
}

function draw(data) {
  lastPrompt = $('#prompt').value;
  fillLayers(data.num_layers, data.layer);
  layerSelect.value = String(data.layer);
  fillPositions(data);
  drawTokens(data);
  $('#where').textContent = `Layer ${data.layer}, position ${data.position} (${q(data.tokens[data.position])})`;
  drawFlow(data);
  drawNeurons(data);
  drawStream(data);
  $('#readout').textContent = readoutLines(data).join('\n');
}

$('#readout').textContent = 'No result yet.';

const go = labForm($('#lab'), () => ({
  prompt: $('#prompt').value,
  layer: Number(layerSelect.value),
  // a new prompt has other tokens: start again from its last one
  position: $('#prompt').value === lastPrompt ? Number(positionSelect.value) : -1,
  top_neurons: num('#top-neurons'),
}), draw, {path: 'inside/block', label: 'Running the layer'});

layerSelect.addEventListener('change', () => go());
positionSelect.addEventListener('change', () => go());

try {
  const info = await getJSON(`${API}/info`);
  const layers = info.engine.num_layers;
  fillLayers(layers, Math.min(Number(layerSelect.value), layers - 1));
  $('#limits').textContent = `The loaded model has ${layers} decoder layers (0–${layers - 1}).`;
} catch { /* the layer list comes with the first response too */ }
go();
