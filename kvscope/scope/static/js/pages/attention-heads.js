import '../chrome.js';
import {$, h, int, replace} from '../dom.js';
import {runLab} from '../api.js';
import {HeatGrid} from '../heatgrid.js';
import {boundLayerHead, readLayerHead} from '../lab.js';
import {cellText, groupLine, readout, triangleMove, weightColor} from '../logic/attention-heads.js';
import {latestOnly, showWhitespace} from '../logic/tokens.js';

let data = null;
const limits = {layers: Infinity, heads: Infinity};
const matrix = new HeatGrid($('#matrix'), $('#detail'), {
  rowAttr: 'q', colAttr: 'k', text: (q, k) => cellText(data, q, k),
  move: (focus, key) => triangleMove(focus, key, data.tokens.length),
});

function drawMatrix() {
  matrix.draw(data.tokens.map((tok, q) => ({
    label: `${q} ${showWhitespace(tok)}`, title: tok, colors: data.probs[q].map(weightColor),
  })), 'Hover over or focus a cell to see its query, key and weight.');
  $('#matrix').setAttribute('aria-rowcount', String(data.tokens.length));
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
  return {prompt: $('#prompt').value, ...readLayerHead(limits)};
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

$('#readout').textContent = 'No result yet.';
const e = await boundLayerHead(limits);
if (e) {
  $('#limits').textContent = `The loaded model has ${e.num_layers} layers (0–${e.num_layers - 1}) `
    + `and ${e.num_heads} query heads (0–${e.num_heads - 1}) sharing ${e.num_kv_heads} KV heads `
    + `of dimension ${e.head_dim}.`;
}
trigger();
