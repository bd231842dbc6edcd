import '../chrome.js';
import {$, h, int, replace} from '../dom.js';
import {API, getJSON, runLab} from '../api.js';
import {cellText, clampIndex, groupLine, readout, triangleMove, weightColor}
  from '../logic/attention-heads.js';
import {latestOnly, showWhitespace} from '../logic/tokens.js';

const matrix = $('#matrix');
const detail = $('#detail');
let data = null;
let focus = {row: 0, col: 0};
const limits = {layers: Infinity, heads: Infinity};

function cellEl({row, col}) {
  return matrix.querySelector(`[data-q="${row}"][data-k="${col}"]`);
}

function select(cell, moveFocus) {
  const old = cellEl(focus);
  if (old) old.tabIndex = -1;
  focus = cell;
  const el = cellEl(cell);
  el.tabIndex = 0;
  if (moveFocus) el.focus();
  detail.textContent = cellText(data, cell.row, cell.col);
}

function drawMatrix() {
  const n = data.tokens.length;
  focus = {row: 0, col: 0};
  replace(matrix, data.tokens.map((tok, q) => h('div', {role: 'row', class: 'hm-row'},
    h('span', {role: 'rowheader', class: 'hm-label', title: tok}, `${q} ${showWhitespace(tok)}`),
    data.probs[q].map((w, k) => h('span', {
      role: 'gridcell', class: 'hm-cell', tabindex: q === 0 && k === 0 ? '0' : '-1',
      'data-q': String(q), 'data-k': String(k), 'aria-label': cellText(data, q, k),
      style: {background: weightColor(w)},
    })))));
  matrix.setAttribute('aria-rowcount', String(n));
  detail.textContent = 'Hover over or focus a cell to see its query, key and weight.';
}

function drawGroup() {
  $('#group-text').textContent = `${groupLine(data)}.`;
  const inGroup = new Set(data.group);
  replace($('#heads'), Array.from({length: data.num_heads}, (_, i) => h('li', {
    class: `head${inGroup.has(i) ? ' shared' : ''}${i === data.head ? ' current' : ''}`,
    'aria-current': i === data.head ? 'true' : null,
  }, `Q${i}`)));
  const {kv} = data;
  const stat = (name, value) => h('div', {}, h('dt', {}, name), h('dd', {}, value));
  replace($('#kv-stats'),
    stat(`with GQA (${data.num_kv_heads} KV heads)`, `${int(kv.kv_bytes_per_token)} B / token`),
    stat(`without (${data.num_heads} KV heads)`, `${int(kv.kv_bytes_per_token_without_gqa)} B / token`),
    stat('saving', `${kv.ratio}×`));
}

let shown = false;
let shownKey = null;  // the body of the run on show: the same again would change nothing
// the request the form describes; a layer or head out of range is pulled back into it
function bodyOf() {
  const layer = clampIndex(Number($('#layer').value), limits.layers);
  const head = clampIndex(Number($('#head').value), limits.heads);
  $('#layer').value = String(layer);
  $('#head').value = String(head);
  return {prompt: $('#prompt').value, layer, head};
}

async function run() {
  const body = bodyOf();
  const key = JSON.stringify(body);
  if (key === shownKey) return;
  const response = await runLab(body, {
    button: $('#run'), statusEl: $('#status'), errorEl: $('#error'), path: 'inside/attention',
    label: 'Computing the attention', keepsPrevious: shown,
  });
  if (!response) return;
  shown = true;
  shownKey = key;
  data = response;
  $('#matrix-caption').textContent = `Layer ${data.layer}, query head ${data.head}: `
    + `row = query token, column = key token (keys 0 to the query's own position).`;
  drawMatrix();
  drawGroup();
  $('#readout').textContent = readout(data);
}

const trigger = latestOnly(run, () => JSON.stringify(bodyOf()));
$('#lab').addEventListener('submit', (event) => {
  event.preventDefault();
  trigger();
});
for (const id of ['#layer', '#head']) $(id).addEventListener('change', trigger);

matrix.addEventListener('mouseover', (event) => {
  const el = event.target.closest?.('.hm-cell');
  if (el) detail.textContent = cellText(data, Number(el.dataset.q), Number(el.dataset.k));
});
matrix.addEventListener('focusin', (event) => {
  const el = event.target.closest?.('.hm-cell');
  if (el) select({row: Number(el.dataset.q), col: Number(el.dataset.k)}, false);
});
matrix.addEventListener('keydown', (event) => {
  if (!data) return;
  const next = triangleMove(focus, event.key, data.tokens.length);
  if (!next) return;
  event.preventDefault();
  select(next, true);
});

$('#readout').textContent = 'No result yet.';
try {
  const e = (await getJSON(`${API}/info`)).engine;
  limits.layers = e.num_layers;
  limits.heads = e.num_heads;
  $('#layer').max = String(e.num_layers - 1);
  $('#head').max = String(e.num_heads - 1);
  $('#limits').textContent = `The loaded model has ${e.num_layers} layers (0–${e.num_layers - 1}) `
    + `and ${e.num_heads} query heads (0–${e.num_heads - 1}) sharing ${e.num_kv_heads} KV heads `
    + `of dimension ${e.head_dim}.`;
} catch { /* the limits are a convenience; the server checks every value */ }
trigger();
