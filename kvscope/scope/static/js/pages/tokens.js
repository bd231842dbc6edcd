import '../chrome.js';
import {$, bytes, h, int, replace} from '../dom.js';
import {runLab} from '../api.js';
import {gridMove} from '../logic/attention-heads.js';
import {chipLabel, debounce, kvFormula, kvTotal, latestOnly, readout, showWhitespace, tokensBody}
  from '../logic/tokens.js';

const text = $('#text');
const system = $('#system');
const chips = $('#chips');
const detail = $('#chip-detail');
let data = null;
let current = 0;  // the chip that holds the tab stop

const chat = () => $('#mode-chat').checked;

function showMode() {
  $('#system-label').hidden = !chat();
}

function focusChip(i, focus = true) {
  const items = chips.children;
  if (!items.length) return;
  current = Math.max(0, Math.min(items.length - 1, i));
  for (const [j, el] of [...items].entries()) el.tabIndex = j === current ? 0 : -1;
  detail.textContent = chipLabel(data.tokens[current], current);
  if (focus) items[current].focus();
}

function draw(body) {
  current = 0;
  replace(chips, data.tokens.map((tok, i) => h('li', {
    class: `chip${tok.special ? ' special' : ''}`, tabindex: i === 0 ? '0' : '-1',
    'data-index': String(i), title: chipLabel(tok, i), 'aria-label': chipLabel(tok, i),
  }, h('span', {class: 't', 'aria-hidden': 'true'}, showWhitespace(tok.text)),
  h('span', {class: 'id', 'aria-hidden': 'true'}, String(tok.id)))));
  detail.textContent = data.tokens.length
    ? 'Hover over or focus a token to see its id and raw bytes.' : 'No tokens.';
  const stat = (name, value, id) => h('div', {}, h('dt', {}, name), h('dd', {id}, value));
  replace($('#counts'),
    stat('tokens', int(data.num_tokens), 'n-tokens'),
    stat('special tokens', int(data.num_special), 'n-special'),
    stat('characters', int(data.num_chars), 'n-chars'),
    stat('UTF-8 bytes', int(data.num_bytes), 'n-bytes'),
    stat('KV cache', bytes(data.kv.kv_bytes), 'kv-total'));
  $('#kv-formula').textContent = `${kvFormula(data.kv)}; ${kvTotal(data)}.`;
  $('#chat-view').hidden = !data.chat;
  if (data.chat) {
    $('#rendered').textContent = data.rendered;
    $('#template').textContent = data.template ?? '';
  }
  $('#readout').textContent = readout(data, {system: body.system !== undefined});
}

let shown = false;
let shownKey = null;  // the body of the run on show: the same again would change nothing
const bodyOf = () => tokensBody({text: text.value, chat: chat(), system: system.value});

async function run() {
  const body = bodyOf();
  if (body.text === '') {
    shownKey = null;
    replace(chips);
    detail.textContent = '';
    $('#readout').textContent = 'No text: type something to tokenize.';
    return;
  }
  const key = JSON.stringify(body);
  if (key === shownKey) return;
  const response = await runLab(body, {
    button: $('#run'), statusEl: $('#status'), errorEl: $('#error'), path: 'inside/tokens',
    label: 'Tokenizing', keepsPrevious: shown,
  });
  if (!response) return;
  shown = true;
  shownKey = key;
  data = response;
  draw(body);
}

const trigger = latestOnly(run, () => JSON.stringify(bodyOf()));
const typed = debounce(trigger, 250);

text.addEventListener('input', typed);
system.addEventListener('input', () => { if (chat()) typed(); });
for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.addEventListener('change', () => {
    showMode();
    typed.cancel();
    trigger();
  });
}
$('#lab').addEventListener('submit', (event) => {
  event.preventDefault();
  typed.cancel();
  trigger();
});

const chipAt = (target) => target.closest?.('li.chip');
chips.addEventListener('mouseover', (event) => {
  const li = chipAt(event.target);
  if (li) detail.textContent = chipLabel(data.tokens[Number(li.dataset.index)], Number(li.dataset.index));
});
chips.addEventListener('focusin', (event) => {
  const li = chipAt(event.target);
  if (li) focusChip(Number(li.dataset.index), false);
});
chips.addEventListener('keydown', (event) => {
  const key = {ArrowUp: 'ArrowLeft', ArrowDown: 'ArrowRight'}[event.key] ?? event.key;
  const next = gridMove({row: 0, col: current}, key, 1, () => chips.children.length);
  if (!next || !['ArrowLeft', 'ArrowRight', 'Home', 'End'].includes(key)) return;
  event.preventDefault();
  focusChip(next.col);
});

showMode();
$('#readout').textContent = 'No result yet.';
trigger();
