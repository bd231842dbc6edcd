// The prefill-vs-decode lesson: a real run's steps, timed, labelled prefill or decode,
// and placed on this machine's measured roofline; beside it the roofline of a GPU
// computed from its published spec, with the same steps' intensities as projections.
// Computing is in ../logic/prefill-decode.js.
import '../chrome.js';
import {$, h, svg, replace} from '../dom.js';
import {API, clearError, getJSON, showError} from '../api.js';
import {labForm, num} from '../lab.js';
import {gpuLine, machineLine, phaseLabels, readoutLines, roofline, stepBars} from '../logic/prefill-decode.js';

let run = null;
let machine = null;

function drawSteps(data) {
  const c = stepBars(data.steps);
  const summary = `${data.steps.length} steps: time per step (top, coloured by phase) and tokens per `
    + `step (bottom). Slowest step ${c.maxMs} ms; most tokens in a step ${c.maxTokens}.`;
  const root = svg('svg', {viewBox: `0 0 ${c.width} ${c.height}`, role: 'img', 'aria-label': summary});
  for (const b of c.bars) {
    const t = svg('rect', {x: b.x, y: b.time.y, width: b.w, height: b.time.h, class: `pd-${b.phase}`});
    t.append(svg('title', {}, b.label));
    root.append(t, svg('rect', {x: b.x, y: b.tokens.y, width: b.w, height: b.tokens.h,
                                class: `pd-${b.phase} pd-tokens`}));
  }
  root.append(svg('text', {x: 2, y: c.top - 4, class: 'axis'}, `ms per step (max ${c.maxMs})`));
  root.append(svg('text', {x: 2, y: c.top2 - 4, class: 'axis'}, `tokens per step (max ${c.maxTokens})`));
  root.append(svg('text', {x: 2, y: c.height - 3, class: 'axis'},
    `steps ${data.steps[0].step}–${data.steps[data.steps.length - 1].step}`));
  replace($('#steps'), root, h('p', {class: 'note'}, summary));
}

function drawRoof(container, roof, steps, {measured, caption}) {
  const r = roofline(roof, steps, {measured});
  const root = svg('svg', {viewBox: `0 0 ${r.width} ${r.height}`, role: 'img', 'aria-label': caption});
  const plotTop = r.top;
  const plotBottom = r.height - r.bottom;
  for (const t of r.xTicks) {
    root.append(svg('line', {x1: t.at, x2: t.at, y1: plotTop, y2: plotBottom, class: 'pd-grid'}));
    root.append(svg('text', {x: t.at, y: plotBottom + 13, class: 'axis', 'text-anchor': 'middle'}, t.text));
  }
  for (const t of r.yTicks) {
    root.append(svg('line', {x1: r.left, x2: r.width - r.right, y1: t.at, y2: t.at, class: 'pd-grid'}));
    root.append(svg('text', {x: r.left - 4, y: t.at + 3, class: 'axis', 'text-anchor': 'end'}, t.text));
  }
  root.append(svg('polyline', {points: r.roof, class: 'pd-roof'}));
  root.append(svg('line', {x1: r.ridge.x, x2: r.ridge.x, y1: r.ridge.y, y2: plotBottom, class: 'pd-ridge'}));
  root.append(svg('text', {x: r.ridge.x + 3, y: r.ridge.y - 4, class: 'axis'}, `ridge ${r.ridge.value}`));
  for (const d of r.dots) {
    const dot = svg('circle', {cx: d.x, cy: d.y, r: 4,
                               class: `pd-dot pd-${d.phase}${d.projected ? ' projected' : ''}`});
    dot.append(svg('title', {}, d.label));
    root.append(dot);
  }
  for (const label of phaseLabels(r.dots)) {
    root.append(svg('text', {x: label.x, y: label.y, class: 'axis pd-label'}, label.text));
  }
  root.append(svg('text', {x: r.width - r.right, y: r.height - 4, class: 'axis', 'text-anchor': 'end'},
    'FLOP per byte (log)'));
  root.append(svg('text', {x: 2, y: 9, class: 'axis'}, 'GFLOP/s (log)'));
  replace(container, root, h('p', {class: 'note'}, caption));
}

function drawRoofs() {
  const steps = run.steps;
  drawRoof($('#roof-machine'), machine, steps, {measured: true,
    caption: `Measured on this server: ${machineLine(machine)}. Each dot is a step at its measured `
      + 'intensity and GFLOP/s.'});
  drawRoof($('#roof-gpu'), run.gpu, steps, {measured: false,
    caption: `${gpuLine(run.gpu)}. Source: ${run.gpu.source}. The hollow dots are projections: the same `
      + 'steps\' intensities placed on this roof, not measured.'});
}

function drawTable(data) {
  const th = (text) => h('th', {scope: 'col'}, text);
  replace($('#table'), h('table', {class: 'data'},
    h('caption', {}, 'Every step of the run: the time measured, the FLOPs and bytes counted from the model\'s shapes'),
    h('thead', {}, h('tr', {}, th('Step'), th('Phase'), th('Tokens'), th('Context'), th('ms'),
      th('FLOP/byte'), th('GFLOP/s'), th('GB/s'))),
    h('tbody', {}, data.steps.map((s) => h('tr', {class: `pd-row-${s.phase}`},
      h('td', {}, String(s.step)), h('td', {}, s.phase), h('td', {}, String(s.num_tokens)),
      h('td', {}, String(s.context_len)), h('td', {}, String(s.time_ms)), h('td', {}, String(s.intensity)),
      h('td', {}, String(s.gflops_per_s)), h('td', {}, String(s.gb_per_s)))))));
}

function drawAll() {
  drawSteps(run);
  drawRoofs();
  drawTable(run);
  $('#readout').textContent = readoutLines(run, machine).join('\n');
}

$('#readout').textContent = 'No result yet.';
const go = labForm($('#lab'), () => ({prompt: $('#prompt').value, max_tokens: num('#max-tokens')}), (data) => {
  run = data;
  machine = data.machine;
  drawAll();
}, {path: 'inside/phases', label: 'The timed run'});

const measure = $('#measure');
measure.addEventListener('click', async () => {
  const errorEl = $('#error');
  const status = $('#measure-status');
  clearError(errorEl);
  measure.disabled = true;
  status.textContent = 'Measuring this machine’s peak FLOP/s and memory bandwidth…';
  try {
    machine = await getJSON(`${API}/inside/roofline?measure=true`);
    status.textContent = `Measured again: peak ${machine.peak_gflops} GFLOP/s, bandwidth `
      + `${machine.bandwidth_gbs} GB/s.`;
    if (run) drawAll();
  } catch (err) {
    showError(errorEl, 'Measuring the machine', err);
    status.textContent = '';
  } finally {
    measure.disabled = false;
  }
});
go();
