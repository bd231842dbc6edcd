import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {runLab} from '../api.js';
import {cellText, clampStart, heatColor, neighboursText, readout, sliceLabel, stripMove}
  from '../logic/embeddings.js';
import {debounce, latestOnly, showWhitespace} from '../logic/tokens.js';

const strip = $('#strip');
const detail = $('#cell-detail');
const startInput = $('#dim-start');
let data = null;
let hidden = null;  // the model's hidden size, from the first response
let focus = {row: 0, col: 0};

const dimCount = () => Number($('#dim-count').value);

function syncStart() {
  if (hidden !== null) {
    startInput.max = String(Math.max(0, hidden - dimCount()));
    startInput.value = String(clampStart(Number(startInput.value), hidden, dimCount()));
  }
  const end = Number(startInput.value) + dimCount() - 1;
  const text = `dims ${startInput.value}–${end}`;
  $('#dim-start-out').textContent = text;
  startInput.setAttribute('aria-valuetext', text);
}

const cellEl = ({row, col}) => strip.querySelector(`[data-r="${row}"][data-c="${col}"]`);

function select(cell, moveFocus) {
  const old = cellEl(focus);
  if (old) old.tabIndex = -1;
  focus = cell;
  const el = cellEl(cell);
  el.tabIndex = 0;
  if (moveFocus) el.focus();
  detail.textContent = cellText(data, cell.row, cell.col);
}

function draw() {
  focus = {row: 0, col: 0};
  const max = data.slice_abs_max;
  replace(strip, data.rows.map((row, r) => h('div', {role: 'row', class: 'hm-row'},
    h('span', {role: 'rowheader', class: 'hm-label', title: row.text}, `${row.position} ${showWhitespace(row.text)}`),
    row.slice.map((v, c) => h('span', {
      role: 'gridcell', class: 'hm-cell', tabindex: r === 0 && c === 0 ? '0' : '-1',
      'data-r': String(r), 'data-c': String(c), 'aria-label': cellText(data, r, c),
      style: {background: heatColor(v, max)},
    })))));
  $('#strip-caption').textContent = `${sliceLabel(data)}; colour from −${max} (blue) through 0 (white) `
    + `to +${max} (orange).`;
  detail.textContent = 'Hover over or focus a cell to see its token, dimension and value.';
  replace($('#rows'), data.rows.map((row) => h('tr', {},
    h('td', {}, String(row.position)),
    h('td', {class: 'mono'}, showWhitespace(row.text)),
    h('td', {}, String(row.id)),
    h('td', {}, String(row.norm)),
    h('td', {class: 'wrap mono'}, neighboursText(row)))));
  $('#readout').textContent = readout(data);
}

let shown = false;
let shownKey = null;  // the body of the run on show: the same again would change nothing
function bodyOf() {
  syncStart();
  return {text: $('#text').value, dim_start: Number(startInput.value), dim_count: dimCount(),
    neighbours: Math.max(1, Math.min(10, Math.trunc(Number($('#neighbours').value)) || 5))};
}

async function run() {
  const body = bodyOf();
  if (body.text === '') {
    shownKey = null;
    $('#readout').textContent = 'No text: type something to look up.';
    return;
  }
  const key = JSON.stringify(body);
  if (key === shownKey) return;
  const response = await runLab(body, {
    button: $('#run'), statusEl: $('#status'), errorEl: $('#error'), path: 'inside/embeddings',
    label: 'Looking up the embeddings', keepsPrevious: shown,
  });
  if (!response) return;
  shown = true;
  shownKey = key;
  data = response;
  hidden = data.hidden_size;
  syncStart();
  draw();
}

const trigger = latestOnly(run, () => JSON.stringify(bodyOf()));
const later = debounce(trigger, 250);
$('#text').addEventListener('input', later);
startInput.addEventListener('input', () => {
  syncStart();
  later();
});
for (const id of ['#dim-count', '#neighbours']) {
  $(id).addEventListener('change', () => {
    later.cancel();
    trigger();
  });
}
$('#lab').addEventListener('submit', (event) => {
  event.preventDefault();
  later.cancel();
  trigger();
});

strip.addEventListener('mouseover', (event) => {
  const el = event.target.closest?.('.hm-cell');
  if (el) detail.textContent = cellText(data, Number(el.dataset.r), Number(el.dataset.c));
});
strip.addEventListener('focusin', (event) => {
  const el = event.target.closest?.('.hm-cell');
  if (el) select({row: Number(el.dataset.r), col: Number(el.dataset.c)}, false);
});
strip.addEventListener('keydown', (event) => {
  if (!data) return;
  const next = stripMove(focus, event.key, data);
  if (!next) return;
  event.preventDefault();
  select(next, true);
});

$('#readout').textContent = 'No result yet.';
syncStart();
trigger();
