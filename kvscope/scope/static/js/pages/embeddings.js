import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {runLab} from '../api.js';
import {HeatGrid} from '../heatgrid.js';
import {cellText, clampStart, heatColor, neighboursText, readout, sliceLabel, stripMove}
  from '../logic/embeddings.js';
import {debounce, latestOnly, showWhitespace} from '../logic/tokens.js';

const startInput = $('#dim-start');
let data = null;
let hidden = null;  // the model's hidden size, from the first response
const strip = new HeatGrid($('#strip'), $('#cell-detail'), {
  rowAttr: 'r', colAttr: 'c', text: (r, c) => cellText(data, r, c),
  move: (focus, key) => stripMove(focus, key, data),
});

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

function draw() {
  const max = data.slice_abs_max;
  strip.draw(data.rows.map((row) => ({
    label: `${row.position} ${showWhitespace(row.text)}`, title: row.text,
    colors: row.slice.map((v) => heatColor(v, max)),
  })), 'Hover over or focus a cell to see its token, dimension and value.');
  $('#strip-caption').textContent = `${sliceLabel(data)}; colour from −${max} (blue) through 0 (white) `
    + `to +${max} (orange).`;
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

$('#readout').textContent = 'No result yet.';
syncStart();
trigger();
