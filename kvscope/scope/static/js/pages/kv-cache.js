import '../chrome.js';
import {$, h, replace, bytes, svg} from '../dom.js';
import {API, getJSON, showError} from '../api.js';
import {labForm, playerFor, loadRun, num, emptyReadout} from '../lab.js';
import {formulaText, requestCache, growthLabel, readoutLines} from '../logic/kv-cache.js';

let sizes = null;

function drawModels(data) {
  const row = (m, source) => h('tr', {},
    h('th', {scope: 'row'}, m.name), h('td', {}, m.num_layers), h('td', {}, m.num_kv_heads),
    h('td', {}, m.head_dim), h('td', {}, m.dtype_bytes), h('td', {}, bytes(m.kv_bytes_per_token)),
    h('td', {}, bytes(m.kv_bytes_per_token * 4096)), h('td', {class: 'wrap'}, source));
  replace($('#models tbody'),
    row(data.loaded, `the loaded model, ${data.loaded.dtype}: what the engine allocates`),
    data.models.map((m) => row(m, m.source)));
}

function drawGrowth(state) {
  const bpt = state.engine.kv_bytes_per_token;
  const steps = state.steps;
  const W = 600;
  const H = 140;
  const maxBytes = Math.max(1, ...steps.map((s) => s.fragmentation.allocated_slots * bpt));
  const label = growthLabel(state);
  const chart = svg('svg', {viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label});
  const n = Math.max(steps.length, 8);
  const bw = W / n;
  steps.forEach((s, i) => {
    const alloc = (s.fragmentation.allocated_slots * bpt / maxBytes) * (H - 20);
    const held = (s.fragmentation.tokens_held * bpt / maxBytes) * (H - 20);
    chart.append(svg('rect', {x: i * bw + 1, y: H - 14 - alloc, width: bw - 2, height: alloc,
                           fill: 'var(--cached)'}));
    chart.append(svg('rect', {x: i * bw + 1, y: H - 14 - held, width: bw - 2, height: held,
                           class: 'tokens'}));
  });
  chart.append(svg('text', {x: 2, y: 10, class: 'axis'}, `max ${bytes(maxBytes)}`));
  chart.append(svg('text', {x: 2, y: H - 2, class: 'axis'}, 'steps →  dark: tokens × bytes/token; light: whole blocks allocated'));
  replace($('#growth'), chart, h('p', {class: 'note'}, label));
}

function drawBars(state) {
  const bpt = state.engine.kv_bytes_per_token;
  const bs = state.engine.block_size;
  const bars = state.order.map((rid) => {
    const {inCache, blocks, total} = requestCache(state, rid);
    return h('li', {},
      h('div', {class: 'bar-label'}, `request ${rid}: ${inCache} tokens = ${bytes(inCache * bpt)} `
        + `(in ${blocks} blocks = ${bytes(blocks * bs * bpt)})`),
      h('div', {class: 'track', role: 'img',
                'aria-label': `${inCache} of at most ${total} tokens cached`},
        h('div', {class: 'fill reserved', style: {width: `${(100 * Math.min(total, blocks * bs)) / total}%`}}),
        h('div', {class: 'fill', style: {width: `${(100 * inCache) / total}%`}})));
  });
  replace($('#bars'), bars.length ? bars : h('li', {class: 'note'}, 'No request has arrived yet.'));
}

function render(state, timeline) {
  if (!state.engine) {
    $('#readout').textContent = emptyReadout(timeline);
    return;
  }
  drawGrowth(state);
  drawBars(state);
  $('#readout').textContent = readoutLines(sizes, state, timeline).join('\n');
}

const player = playerFor($('#player'), render, {label: 'KV cache growth run'});
const go = labForm($('#lab'), () => ({
  prompts: [$('#prompt').value],
  max_tokens: num('#max-tokens'),
  block_size: num('#block-size'),
  num_blocks: 32,
  enable_prefix_caching: false,
}), (data) => loadRun(player, data.events, 'last-step'));

try {
  sizes = await getJSON(`${API}/kv-sizes`);
  $('#formula').textContent = formulaText(sizes.loaded);
  drawModels(sizes);
} catch (err) {
  $('#formula').textContent = '';
  showError($('#error'), 'Reading the model sizes', err);
}
go();
