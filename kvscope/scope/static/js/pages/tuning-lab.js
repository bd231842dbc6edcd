import '../chrome.js';
import {$, h, replace, svg} from '../dom.js';
import {API, getJSON, runLab, showError} from '../api.js';
import {num} from '../lab.js';
import {CHARTS, checkSetting, fixed, layout, nearest, pointOf, pointTitle, readoutLines, runBody,
  sweepPoints, sweepSummary, tableRow} from '../logic/tuning-lab.js';

const form = $('#lab');
const errorEl = $('#error');
const statusEl = $('#status');
const detail = $('#point-detail');

const sweep = {doc: null, points: []};  // the recorded sweep, once loaded
const live = [];  // every live point so far, oldest first
let selected = null;  // the point last hovered or focused

// -- the charts ---------------------------------------------------------------------------

function axes(root, plot, title) {
  const {width, height, pad} = plot;
  for (const t of plot.yTicks) {
    root.append(svg('line', {x1: pad.l, x2: width - pad.r, y1: t.at, y2: t.at, class: 'tl-grid'}));
    root.append(svg('text', {x: pad.l - 4, y: t.at + 3, class: 'axis', 'text-anchor': 'end'}, String(t.v)));
  }
  for (const t of plot.xTicks) {
    root.append(svg('line', {x1: t.at, x2: t.at, y1: pad.t, y2: height - pad.b, class: 'tl-grid'}));
    root.append(svg('text', {x: t.at, y: height - pad.b + 12, class: 'axis', 'text-anchor': 'middle'}, String(t.v)));
  }
  root.append(svg('text', {x: width - pad.r, y: height - 3, class: 'axis', 'text-anchor': 'end'},
    'output tokens/s'));
  root.append(svg('text', {x: 2, y: pad.t - 2, class: 'axis'}, title));
}

function mark(dot) {
  const {point: p, x, y} = dot;
  const cls = `tl-dot tl-${p.source}${selected === p ? ' selected' : ''}`;
  const g = svg('g', {class: cls, tabindex: '0', role: 'img', 'aria-label': pointTitle(p),
                      'data-source': p.source, 'data-index': String(p.index)});
  g.append(svg('title', {}, pointTitle(p)));
  if (p.source === 'live') {
    g.append(svg('path', {d: `M${x},${y - 6} L${x + 6},${y} L${x},${y + 6} L${x - 6},${y} Z`}));
  } else {
    g.append(svg('circle', {cx: x, cy: y, r: 4}));
  }
  const choose = () => choosePoint(p);
  g.addEventListener('mouseenter', choose);
  g.addEventListener('focus', choose);
  return g;
}

function drawChart(key) {
  const {metric, title} = CHARTS[key];
  const plot = layout([...sweep.points, ...live], metric, {width: 360, height: 240,
                                                          pad: {l: 46, r: 10, t: 16, b: 30}});
  const root = svg('svg', {viewBox: `0 0 ${plot.width} ${plot.height}`, role: 'group',
                           'aria-label': `${title} against output tokens per second: `
                             + `${plot.dots.length} points`});
  axes(root, plot, `${title.replace(' (mean, ms)', '')}, ms (log)`);
  if (plot.line) root.append(svg('polyline', {points: plot.line, class: 'tl-front'}));
  // live points last, so they sit on top of the recorded ones
  for (const dot of plot.dots.filter((d) => d.point.source === 'recorded')) root.append(mark(dot));
  for (const dot of plot.dots.filter((d) => d.point.source === 'live')) root.append(mark(dot));
  const figure = $(`#chart-${key}`);
  figure.querySelector('svg')?.remove();
  figure.append(root);
}

function choosePoint(p) {
  selected = p;
  detail.textContent = pointTitle(p);
  for (const g of document.querySelectorAll('.tl-dot')) {
    const same = g.dataset.source === p.source && Number(g.dataset.index) === p.index;
    g.classList.toggle('selected', same);
  }
}

function drawTable() {
  replace($('#points tbody'), [...live.slice().reverse(), ...sweep.points].map((p) => {
    const [name, label, ...cells] = tableRow(p);
    return h('tr', {class: p.source === 'live' ? 'tl-live-row' : null},
      h('th', {scope: 'row'}, name), h('td', {}, label), cells.map((text) => h('td', {}, text)));
  }));
}

function drawAll() {
  drawChart('ttft');
  drawChart('tpot');
  drawTable();
}

// -- the recorded sweep ---------------------------------------------------------------------

async function loadSweep() {
  try {
    const doc = await getJSON(`${API}/lab/tuning/sweep`);
    sweep.points = sweepPoints(doc);
    sweep.doc = doc;
    replace($('#sweep-note'), sweepSummary(doc, sweep.points).join(' '));
    replace($('#sweep-command'), 'Remake the recorded sweep with ', h('code', {}, doc.command));
  } catch (err) {
    $('#sweep-note').textContent = 'The recorded sweep is not available; live points are still measured.';
    showError(errorEl, 'Loading the recorded sweep', err);
  }
  drawAll();
}

// -- running one setting live ---------------------------------------------------------------

function readKnobs() {
  const rate = $('#request-rate').value;
  return checkSetting({
    max_num_seqs: num('#max-num-seqs'),
    max_num_batched_tokens: num('#max-num-batched-tokens'),
    num_blocks: num('#num-blocks'),
    enable_prefix_caching: $('#prefix-caching').checked,
    speculative: $('#speculative').checked ? 'ngram' : 'off',
    request_rate: rate === '' ? null : Number(rate),
  }, sweep.doc?.workload);
}

async function measure() {
  let setting;
  try {
    setting = readKnobs();
  } catch (err) {
    showError(errorEl, 'Reading the knobs', err);
    return;
  }
  const data = await runLab(runBody(setting, sweep.doc?.workload), {
    path: 'lab/tuning', button: $('#run'), statusEl, errorEl, label: 'The live run',
    keepsPrevious: live.length > 0});
  if (!data) return;
  const point = pointOf(data, 'live', live.length);
  live.push(point);
  drawAll();
  choosePoint(point);
  $('#readout').textContent = readoutLines(point, live.length, nearest(point, sweep.points),
                                           data.machine, sweep.doc?.machine).join('\n');
  statusEl.textContent += ` Live point ${live.length}: ${fixed(point.tokPerS, 1)} tok/s.`;
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  measure();
});

loadSweep();
