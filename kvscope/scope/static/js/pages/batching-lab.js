import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {clearError, runLab, showError} from '../api.js';
import {num} from '../lab.js';
import {Stepper} from '../stepper.js';
import {MODES, PRESETS, checkSeats, figures, formatRows, labBody, lanes, ms, parseRows, readoutLines,
  sameTokens, stepLine, tableRows} from '../logic/batching-lab.js';

const form = $('#lab');
const button = $('#run');
const statusEl = $('#status');
const errorEl = $('#error');
const workload = $('#workload');

let shown = null;  // the runs on show: {s, c, lanes: {static, continuous}, count}

// -- the workload editor ------------------------------------------------------------------

const chosen = () => form.querySelector('input[name="preset"]:checked').value;

function showPreset() {
  const name = chosen();
  const preset = PRESETS[name];
  if (preset) workload.value = formatRows(preset.rows);
  $('#preset-blurb').textContent = preset ? preset.blurb
    : 'Your own workload: edit the list below, within the limits under it.';
}

for (const radio of form.querySelectorAll('input[name="preset"]')) {
  radio.addEventListener('change', showPreset);
}
workload.addEventListener('input', () => {
  form.querySelector('input[name="preset"][value="custom"]').checked = true;
  showPreset();
});
showPreset();

// -- the lanes ------------------------------------------------------------------------------

const STATE_TEXT = {waiting: 'waiting', prefill: 'prefill chunk', decode: 'decode', idle: 'idle slot',
                    finished: 'finished', absent: 'not arrived yet'};

function laneSummary(f, laneList) {
  const count = (state) => laneList.reduce((n, l) => n + l.cells.filter((c) => c.state === state).length, 0);
  return `${f.batching} batching: ${laneList.length} requests over ${f.steps} steps; `
    + `${count('prefill')} prefill chunks, ${count('decode')} decodes, ${count('idle')} idle slots, `
    + `${count('waiting')} request-steps waiting.`;
}

function drawLanes(el, f, laneList, count) {
  const rows = laneList.map((lane) => h('li', {class: 'bl-lane'},
    h('span', {class: 'bl-name'}, lane.rid),
    h('span', {class: 'bl-track', 'data-rid': lane.rid, onclick: (e) => pick(e, count)},
      Array.from({length: count}, (_, i) => {
        const cell = lane.cells[i];
        const state = cell ? cell.state : 'over';
        const title = cell ? `request ${lane.rid}, step ${f.summary.steps[i].step}: ${STATE_TEXT[state]}`
          + (state === 'prefill' ? ` (${cell.tokens} tokens)` : '') : `the ${f.batching} run had ended`;
        return h('span', {class: `bl-cell bl-${state}`, title});
      }),
      h('span', {class: 'bl-mark', 'aria-hidden': 'true'}))));
  const axis = h('div', {class: 'bl-axis', 'aria-hidden': 'true'}, h('span', {class: 'bl-name'}),
    h('span', {class: 'bl-ticks'}, h('span', {}, 'step 0'),
      h('span', {}, `step ${count - 1}`)));
  replace(el, h('div', {class: 'bl-run', role: 'img', 'aria-label': laneSummary(f, laneList)},
    h('ul', {class: 'bl-lanes'}, rows), axis));
}

// A click on a lane selects the step under the pointer.
function pick(event, count) {
  const box = event.currentTarget.getBoundingClientRect();
  const at = Math.floor(((event.clientX - box.left) / box.width) * count);
  stepper.go(Math.max(0, Math.min(count - 1, at)));
}

function select(index) {
  if (!shown) return;
  for (const mark of document.querySelectorAll('.bl-mark')) {
    mark.style.left = `${(100 * index) / shown.count}%`;
    mark.style.width = `${100 / shown.count}%`;
  }
  replace($('#step-detail'),
    MODES.map((mode) => h('li', {}, stepLine(shown[mode], shown.lanes[mode], index))));
}

const stepper = new Stepper($('[data-stepper="bl-step"]'), select);

// -- the tables and the readout -------------------------------------------------------------

function drawFigures(s, c) {
  replace($('#figures tbody'), tableRows(s, c).map(([name, ...cells]) => h('tr', {},
    h('th', {scope: 'row'}, name), cells.map((text) => h('td', {}, text)))));
}

function drawRequests(s, c, same, body) {
  const sameOf = Object.fromEntries(same.map((x) => [x.rid, x.same]));
  replace($('#requests tbody'), s.summary.order.map((rid, i) => {
    const a = s.summary.requests[rid];
    const b = c.summary.requests[rid];
    return h('tr', {},
      h('th', {scope: 'row'}, rid),
      h('td', {}, String(body.arrive_at_step[Number(rid)] ?? a.arrivedStep)),
      h('td', {}, String(a.promptLen)),
      h('td', {}, String(a.outputs)),
      h('td', {}, ms(s.ttft[i])), h('td', {}, ms(c.ttft[i])),
      h('td', {}, ms(s.e2e[i])), h('td', {}, ms(c.e2e[i])),
      h('td', {}, sameOf[rid] ? 'yes' : 'no'));
  }));
}

function show(results, body, name) {
  const s = figures(results.static, 'static');
  const c = figures(results.continuous, 'continuous');
  const count = Math.max(s.steps, c.steps);
  shown = {static: s, continuous: c, count,
           lanes: {static: lanes(s.summary, s.batches), continuous: lanes(c.summary)}};
  drawLanes($('#lanes-static'), s, shown.lanes.static, count);
  drawLanes($('#lanes-continuous'), c, shown.lanes.continuous, count);
  const same = sameTokens(results.static.outputs, results.continuous.outputs);
  drawFigures(s, c);
  drawRequests(s, c, same, body);
  $('#readout').textContent = readoutLines(PRESETS[name]?.label ?? 'custom', s, c, same).join('\n');
  const busy = (f, i) => (i < f.steps ? `${f.batching} ${f.summary.steps[i].busy} of ${f.seats} seats busy`
    : `${f.batching} done`);
  stepper.load(count, (i) => `${busy(s, i)}, ${busy(c, i)}`, 0);
}

// -- running ----------------------------------------------------------------------------------

async function runBoth() {
  const name = chosen();
  let rows;
  let seats;
  try {
    rows = parseRows(workload.value);
    seats = checkSeats(num('#seats'));
  } catch (err) {
    showError(errorEl, 'Reading the workload', err);
    return;
  }
  clearError(errorEl);
  button.disabled = true;
  statusEl.setAttribute('aria-busy', 'true');
  const started = performance.now();
  const results = {};
  try {
    for (const [i, mode] of MODES.entries()) {
      statusEl.textContent = `Running the ${mode} batcher on the server (${i + 1} of 2)…`;
      const data = await runLab(labBody(rows, seats, mode), {errorEl, label: `The ${mode} run`});
      if (!data) {
        statusEl.textContent = shown ? 'The pictures below still show the previous runs.' : '';
        return;
      }
      results[mode] = data;
    }
    show(results, labBody(rows, seats, 'static'), name);
    statusEl.textContent = `Both runs done in ${((performance.now() - started) / 1000).toFixed(1)} s.`;
  } finally {
    button.disabled = false;
    statusEl.removeAttribute('aria-busy');
  }
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  runBoth();
});
