import {LESSONS, COMING, GUIDES} from '../chrome.js';
import {h, $} from '../dom.js';
import {API, getJSON, showError} from '../api.js';

$('#lessons').replaceChildren(...LESSONS.map((l) => h('li', {},
  h('h3', {}, h('a', {href: `lessons/${l.page}.html`}, l.title)),
  h('p', {}, l.blurb))));

$('#guides').replaceChildren(...GUIDES.map((g) => h('li', {},
  h('h3', {}, h('a', {href: `lessons/${g.page}.html`}, g.title)),
  h('p', {}, g.blurb))));
$('#guides-section').hidden = GUIDES.length === 0;

$('#coming').replaceChildren(...COMING.map((l) => h('li', {class: 'soon'},
  h('h3', {}, l.title, ' ', h('span', {class: 'tag'}, 'coming when the engine supports it')),
  h('p', {}, l.blurb))));
$('#coming-section').hidden = COMING.length === 0;

try {
  const info = await getJSON(`${API}/info`);
  const e = info.engine;
  const mode = info.replay ? 'replaying a recorded run' : info.live ? 'serving live' : 'idle';
  $('#server').textContent = `Server model: ${info.model} (${mode}). `
    + (e ? `${e.num_layers} layers, ${e.num_kv_heads} KV heads of dimension ${e.head_dim}, `
      + `${e.dtype}; KV pool of ${e.num_blocks} blocks × ${e.block_size} tokens.` : '');
} catch (err) {
  $('#server').textContent = '';
  showError($('#error'), 'Asking the server for its model', err);
}
