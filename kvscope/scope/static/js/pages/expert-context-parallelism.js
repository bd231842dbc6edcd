import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {API, getJSON, showError, clearError} from '../api.js';
import {BATCHES, SEQ_LENS, CP_SIZES, CP_COLUMNS, ranks, tokens, shortTokens, nearestEp, query,
  rankBars, a2aText, cpRows, cpBars, readoutLines} from '../logic/expert-context-parallelism.js';

const modelSelect = $('#ep-model');
const epInput = $('#ep');
const batchInput = $('#batch');
const seqInput = $('#seq-len');
const cpInput = $('#cp');
const errorEl = $('#error');

let models = null;  // the published shapes, from the first answer
let epSizes = [1, 2, 4, 8];  // the selected model's; the HTML starts on Mixtral's
let asked = 0;  // answers to older questions are dropped

const settings = () => ({
  model: modelSelect.value || 'mixtral-8x7b',
  ep: epSizes[Number(epInput.value)],
  batch: BATCHES[Number(batchInput.value)],
  seqLen: SEQ_LENS[Number(seqInput.value)],
  cp: CP_SIZES[Number(cpInput.value)],
});

function say(input, out, text) {
  $(out).textContent = text;
  input.setAttribute('aria-valuetext', text);
}

function sayAll() {
  const s = settings();
  say(epInput, '#ep-out', ranks(s.ep));
  say(batchInput, '#batch-out', tokens(s.batch));
  say(seqInput, '#seq-len-out', `${tokens(s.seqLen)} (${shortTokens(s.seqLen)})`);
  say(cpInput, '#cp-out', ranks(s.cp));
}

function drawModels() {
  const current = modelSelect.value || 'mixtral-8x7b';
  replace(modelSelect, models.map((m) => h('option', {value: m.key, selected: m.key === current},
    `${m.name}: ${m.num_experts} experts, top-${m.experts_per_token}`)));
}

function drawEp(ep) {
  replace($('#ep-bars'), rankBars(ep).map((b) => h('li', {},
    h('div', {class: 'bar-label'}, b.label),
    h('div', {class: 'track', role: 'img', 'aria-label': b.label},
      h('div', {class: 'fill ecp-dense', style: {width: `${b.densePct}%`}}),
      h('div', {class: 'fill ecp-expert', style: {left: `${b.densePct}%`, width: `${b.expertPct}%`}})))));
  $('#a2a').textContent = a2aText(ep);
}

function drawCp(cp) {
  replace($('#cp-bars'), cpBars(cp).map((b) => h('li', {},
    h('div', {class: 'bar-label'}, b.label),
    h('div', {class: 'track', role: 'img', 'aria-label': b.label},
      h('div', {class: 'fill ecp-whole', style: {width: `${b.wholePct}%`}}),
      h('div', {class: 'fill ecp-rank', style: {width: `${b.rankPct}%`}})))));
  replace($('#cp-table thead tr'), h('th', {scope: 'col'}, 'Model'),
    CP_COLUMNS.map((c) => h('th', {scope: 'col'}, c)));
  replace($('#cp-table tbody'), cpRows(cp).map((r) => h('tr', {class: r.loaded ? 'ecp-loaded' : null},
    h('th', {scope: 'row'}, r.name), r.cells.map((c) => h('td', {}, c)))));
}

async function update() {
  sayAll();
  const id = ++asked;
  let data;
  try {
    data = await getJSON(`${API}/parallel-math?${query(settings())}`);
  } catch (err) {
    if (id === asked) showError(errorEl, 'Computing the figures', err);
    return;
  }
  if (id !== asked) return;
  clearError(errorEl);
  if (!models) {
    models = data.models;
    drawModels();
  }
  drawEp(data.expert_parallel);
  drawCp(data.context_parallel);
  $('#readout').textContent = readoutLines(data).join('\n');
}

modelSelect.addEventListener('change', () => {
  const current = epSizes[Number(epInput.value)];
  epSizes = models.find((m) => m.key === modelSelect.value).ep_sizes;
  epInput.max = String(epSizes.length - 1);
  epInput.value = String(epSizes.indexOf(nearestEp(epSizes, current)));
  update();
});
for (const input of [epInput, batchInput, seqInput, cpInput]) input.addEventListener('input', update);

update();
