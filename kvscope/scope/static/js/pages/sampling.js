// The sampling lesson: the next-token distribution of the real logits, before and
// after temperature, top-k, top-p and min-p, as the engine's own sampler computes it.
// Each change of a control asks the server again (debounced; one request at a time).
// Computing is in ../logic/sampling.js.
import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {runLab} from '../api.js';
import {candidateRows, controlText, debounce, latestOnly, probText, q, readoutLines, requestBody}
  from '../logic/sampling.js';

const CONTROLS = {temperature: '#temperature', top_k: '#top-k', top_p: '#top-p', min_p: '#min-p',
                  seed: '#seed', show: '#show'};
const RANGES = ['temperature', 'top_k', 'top_p', 'min_p'];
const form = $('#lab');

function values() {
  return Object.fromEntries(Object.entries(CONTROLS).map(([k, sel]) => [k, $(sel).value]));
}

function label(name) {
  const input = $(CONTROLS[name]);
  const text = controlText(name, input.value);
  input.setAttribute('aria-valuetext', text);
  $(`output[for="${input.id}"]`).textContent = text;
}

function draw(data) {
  replace($('#candidates'), candidateRows(data).map((r) => h('li', {
    class: `smp-cand${r.survives ? '' : ' filtered'}`, 'aria-label': r.label},
  h('span', {class: 'smp-rank'}, String(r.rank)),
  h('span', {class: 'smp-tok'}, r.token),
  h('span', {class: 'smp-bars', 'aria-hidden': 'true'},
    h('span', {class: 'track'}, h('span', {class: 'fill smp-before', style: {width: `${r.beforeWidth}%`}})),
    h('span', {class: 'track'}, h('span', {class: 'fill smp-after', style: {width: `${r.afterWidth}%`}}))),
  h('span', {class: 'smp-p', 'aria-hidden': 'true'},
    `${probText(r.before)} → ${r.survives ? probText(r.after) : 'filtered'}`))));
  replace($('#outcome'),
    h('div', {}, h('dt', {}, 'tokens that survive'), h('dd', {}, `${data.num_survivors} of ${data.vocab_size}`)),
    h('div', {}, h('dt', {}, `drawn (seed ${data.params.seed})`), h('dd', {class: 'smp-tok'}, q(data.drawn.text))),
    h('div', {}, h('dt', {}, 'greedy (argmax)'), h('dd', {class: 'smp-tok'}, q(data.greedy.text))));
  $('#readout').textContent = readoutLines(data).join('\n');
}

let shown = false;
const ask = latestOnly(async () => {
  const data = await runLab(requestBody($('#prompt').value, values()), {
    button: form.querySelector('button[type="submit"]'), statusEl: $('#status'), errorEl: $('#error'),
    path: 'inside/sampling', label: 'Sampling', keepsPrevious: shown,
  });
  if (data) {
    shown = true;
    draw(data);
  }
});
const soon = debounce(ask, 200);

for (const name of RANGES) {
  label(name);
  $(CONTROLS[name]).addEventListener('input', () => {
    label(name);
    soon();
  });
}
$('#seed').addEventListener('input', soon);
$('#show').addEventListener('input', soon);
form.addEventListener('submit', (event) => {
  event.preventDefault();
  soon.cancel();
  ask();
});
$('#readout').textContent = 'No result yet.';
ask();
