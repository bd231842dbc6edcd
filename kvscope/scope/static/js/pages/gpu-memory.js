import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {API, getJSON, showError} from '../api.js';
import {CONTEXTS, H100_LEVELS, H100_SOURCE, LLAMA_70B, gb, machineLines, mb, placement, placementLine}
  from '../logic/gpu-memory.js';

let info = null;
let roof = null;

replace($('#levels tbody'), H100_LEVELS.map((l) => h('tr', {},
  h('th', {scope: 'row'}, l.name), h('td', {}, l.capacity ? (l.capacity >= 1e9 ? gb(l.capacity) : mb(l.capacity)) : '—'),
  h('td', {}, l.bandwidth ? `${l.bandwidth} GB/s` : 'no single published figure'),
  h('td', {class: 'wrap'}, `${l.per}; ${H100_SOURCE}`))));

function chosen() {
  const context = CONTEXTS[Number($('#context').value)] ?? 8192;
  const batch = Number($('#batch').value) || 1;
  $('#context-value').textContent = String(context);
  $('#batch-value').textContent = String(batch);
  $('#context').setAttribute('aria-valuetext', `${context} tokens`);
  $('#batch').setAttribute('aria-valuetext', `${batch} request${batch === 1 ? '' : 's'}`);
  return {context, batch};
}

function draw() {
  const options = chosen();
  const models = [[LLAMA_70B.name, LLAMA_70B]];
  if (info) models.unshift([info.model.name, info.model]);
  const placed = models.map(([name, m]) => [name, placement(m, options)]);
  replace($('#sizes tbody'), placed.map(([name, p]) => h('tr', {},
    h('th', {scope: 'row'}, name), h('td', {}, gb(p.weights)), h('td', {}, gb(p.kv)),
    h('td', {}, mb(p.activations)), h('td', {}, String(p.gpus)))));
  const lines = placed.map(([name, p]) => placementLine(name, p, options));
  if (info) lines.push(...machineLines(info, roof));
  $('#readout').textContent = lines.join('\n');
}

$('#context').addEventListener('input', draw);
$('#batch').addEventListener('input', draw);
draw();

async function load() {
  const status = $('#status');
  try {
    info = await getJSON(`${API}/machine-memory`);
    replace($('#caches tbody'), [
      ...info.caches.map((c) => h('tr', {}, h('th', {scope: 'row'}, `L${c.level} ${c.type.toLowerCase()}`),
        h('td', {}, `${c.size_bytes / 1024} KiB`), h('td', {}, c.shared_cpu_list))),
      h('tr', {}, h('th', {scope: 'row'}, 'main memory'),
        h('td', {}, info.memory_bytes ? gb(info.memory_bytes) : 'unknown'), h('td', {}, 'all'))]);
    draw();
    status.textContent = 'Measuring this machine’s memory bandwidth…';
    roof = await getJSON(`${API}/inside/roofline`);
    status.textContent = `Measured bandwidth: ${roof.bandwidth_gbs} GB/s (${roof.method}).`;
    draw();
  } catch (err) {
    status.textContent = '';
    showError($('#error'), 'Reading this machine’s memory', err);
  }
}
load();
