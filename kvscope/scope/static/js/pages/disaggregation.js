import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {labForm, num} from '../lab.js';
import {Stepper} from '../stepper.js';
import {SIDES, entries, entryLine, heldAt, readoutLines, counters, disaggBody} from '../logic/disaggregation.js';

const NAMES = {prefill: 'Prefill server', decode: 'Decode server'};
let list = [];
let rows = [];

function drawHeld(at) {
  const held = heldAt(list, at);
  replace($('#held'), SIDES.map((side) => h('li', {class: `dg-${side}`},
    h('span', {class: 'dg-name'}, `${NAMES[side]} holds`),
    held[side].length
      ? h('span', {class: 'dg-blocks', 'aria-label': `${NAMES[side]}: blocks ${held[side].join(', ')}`},
        held[side].map((b) => h('span', {class: 'dg-block', 'aria-hidden': 'true'}, String(b))))
      : h('span', {class: 'dg-none'}, 'no blocks'))));
}

// keep the current row in view inside the scrolling lanes, without moving the page
function reveal(row) {
  const box = $('#lanes-scroll');
  const top = row.offsetTop;
  if (top < box.scrollTop || top + row.offsetHeight > box.scrollTop + box.clientHeight) {
    box.scrollTop = Math.max(0, top - box.clientHeight / 3);
  }
}

function move(at) {
  rows.forEach((row, i) => {
    row.classList.toggle('current', i === at);
    row.classList.toggle('later', i > at);
    if (i === at) row.setAttribute('aria-current', 'step');
    else row.removeAttribute('aria-current');
  });
  drawHeld(at);
  if (rows[at]) reveal(rows[at]);
}

const stepper = new Stepper($('[data-stepper="lifecycle"]'), move);

function drawLanes() {
  const lanes = $('#lanes');
  rows = list.map((entry, i) => h('li', {
    class: `dg-entry dg-${entry.side}${entry.transfer ? ' dg-kv' : ''}${entry.fromProducer ? ' dg-given' : ''}`,
    'data-entry': i, style: {gridRow: String(i + 2)},
  }, h('span', {class: 'dg-side'}, `${entry.side}: `), entry.text));
  replace(lanes, [...lanes.querySelectorAll('.dg-head')], rows);
}

function drawCounters(data) {
  replace($('#counters'), counters(data).map(([what, value, how]) => h('div', {},
    h('dt', {}, what), h('dd', {class: 'dg-value'}, value), h('dd', {class: 'dg-how'}, how))));
  $('#output').textContent = `The decode server's text: ${JSON.stringify(data.output.text)} `
    + `(${data.output.token_ids.length} tokens; the first one is the prefill server's).`;
}

function show(data) {
  list = entries(data);
  drawLanes();
  drawCounters(data);
  $('#readout').textContent = readoutLines(data, list).join('\n');
  stepper.load(list.length, (i) => entryLine(list[i]));
}

drawHeld(-1);

// the run waits for the reader's button: it starts three engines
labForm($('#lab'), () => disaggBody({prompt: $('#prompt').value, maxTokens: num('#max-tokens'),
                                     connector: $('#connector').value, blockSize: num('#block-size')}),
        (data) => show(data), {path: 'lab/disaggregation', label: 'The disaggregated run'});
