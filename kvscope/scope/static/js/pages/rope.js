import '../chrome.js';
import {$, h, replace, svg} from '../dom.js';
import {runLab} from '../api.js';
import {HeatGrid} from '../heatgrid.js';
import {boundLayerHead, readLayerHead} from '../lab.js';
import {angleColor, angleMove, angleText, chartGeometry, pointText, readout, scoreAt}
  from '../logic/rope.js';
import {latestOnly} from '../logic/tokens.js';

const inspect = $('#inspect');
let data = null;
let geometry = null;
const limits = {layers: Infinity, heads: Infinity};
const grid = new HeatGrid($('#angles'), $('#angle-detail'), {
  rowAttr: 'p', colAttr: 'i', text: (p, i) => angleText(data, p, i),
  move: (focus, key) => angleMove(focus, key, data),
});

function drawAngles() {
  grid.draw(data.angle_positions.map((pos, p) => ({
    label: `pos ${pos}`, colors: data.angles[p].map(angleColor),
  })), 'Hover over or focus a cell to see its angle and wavelength.');
  replace($('#pairs'), data.pairs.map((pair) => h('tr', {},
    h('td', {}, String(pair.pair)), h('td', {}, `${pair.dims[0]}, ${pair.dims[1]}`),
    h('td', {}, String(pair.inv_freq)), h('td', {}, String(pair.wavelength)))));
}

function drawChart() {
  const g = geometry = chartGeometry(data);
  const {x0, x1, y0, y1} = g.plot;
  const chart = svg('svg', {viewBox: `0 0 ${g.width} ${g.height}`, role: 'img',
    'aria-labelledby': 'chart-title'});
  chart.append(svg('title', {id: 'chart-title'}, `q·k score against distance, 0 to `
    + `${data.scores[data.scores.length - 1].distance}; the run's pair at distance ${data.distance} `
    + `scores ${data.score_in_run}, without RoPE ${data.score_without_rope}`));
  for (const t of g.yTicks) {
    chart.append(svg('line', {class: 'grid', x1: x0, x2: x1, y1: t.y, y2: t.y}),
      svg('text', {class: 'axis', x: x0 - 6, y: t.y + 3, 'text-anchor': 'end'}, String(t.value)));
  }
  for (const t of g.xTicks) {
    chart.append(svg('line', {class: 'grid', x1: t.x, x2: t.x, y1: y0, y2: y1}),
      svg('text', {class: 'axis', x: t.x, y: y1 + 14, 'text-anchor': 'middle'}, String(t.value)));
  }
  chart.append(
    svg('text', {class: 'axis', x: (x0 + x1) / 2, y: g.height - 4, 'text-anchor': 'middle'},
      'distance q − k (tokens)'),
    svg('line', {class: 'no-rope', x1: x0, x2: x1, y1: g.withoutRope, y2: g.withoutRope}),
    svg('text', {class: 'axis no-rope-label', x: x1, y: g.withoutRope - 4, 'text-anchor': 'end'},
      'without RoPE'),
    svg('path', {class: 'curve', d: g.path}),
    svg('line', {class: 'cursor', id: 'cursor', x1: 0, x2: 0, y1: y0, y2: y1}),
    svg('circle', {class: 'run-point', cx: g.run.x, cy: g.run.y, r: 5}),
    svg('circle', {class: 'inspect-point', id: 'inspect-point', cx: 0, cy: 0, r: 7}));
  replace($('#chart'), chart);
}

function showPoint() {
  if (!data) return;
  const d = Number(inspect.value);
  const text = pointText(data, d);
  $('#point-detail').textContent = text;
  inspect.setAttribute('aria-valuetext', text);
  const x = geometry.x(d);
  for (const [k, v] of [['x1', x], ['x2', x]]) $('#cursor').setAttribute(k, v);
  $('#inspect-point').setAttribute('cx', x);
  $('#inspect-point').setAttribute('cy', geometry.y(scoreAt(data, d)));
}

let shown = false;
let shownKey = null;  // the body of the run on show: the same again would change nothing
// the request the form describes; a layer or head out of range is pulled back into it
function bodyOf() {
  const {layer, head} = readLayerHead(limits);
  const int = (id, fallback) => {
    const v = Math.trunc(Number($(id).value.trim() || NaN));
    return Number.isFinite(v) ? v : fallback;
  };
  return {prompt: $('#prompt').value, layer, head,
    query_position: int('#query-position', -1), key_position: int('#key-position', 0),
    max_distance: int('#max-distance', 256)};
}

async function run() {
  const body = bodyOf();
  const key = JSON.stringify(body);
  if (key === shownKey) return;
  const response = await runLab(body, {
    button: $('#run'), statusEl: $('#status'), errorEl: $('#error'), path: 'inside/rope',
    label: 'Measuring RoPE', keepsPrevious: shown,
  });
  if (!response) return;
  shown = true;
  shownKey = key;
  data = response;
  drawAngles();
  drawChart();
  const last = data.scores[data.scores.length - 1].distance;
  inspect.max = String(last);
  inspect.value = String(Math.min(data.distance, last));
  showPoint();
  $('#readout').textContent = readout(data);
}

const trigger = latestOnly(run, () => JSON.stringify(bodyOf()));
$('#lab').addEventListener('submit', (event) => {
  event.preventDefault();
  trigger();
});
for (const id of ['#layer', '#head', '#query-position', '#key-position', '#max-distance']) {
  $(id).addEventListener('change', trigger);
}
inspect.addEventListener('input', showPoint);

$('#readout').textContent = 'No result yet.';
const e = await boundLayerHead(limits);
if (e) {
  $('#limits').textContent = `The loaded model has ${e.num_layers} layers (0–${e.num_layers - 1}) `
    + `and ${e.num_heads} query heads (0–${e.num_heads - 1}) of dimension ${e.head_dim}: `
    + `${e.head_dim / 2} rotated pairs per head.`;
}
trigger();
