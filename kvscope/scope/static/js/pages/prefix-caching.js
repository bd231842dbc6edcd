import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {postJSON, showError} from '../api.js';
import {PoolGrid, drawBlockTables, poolLegend} from '../views.js';
import {labForm, playerFor, loadRun, emptyReadout} from '../lab.js';
import {prefixChain, resultOf, short, openingStop, readoutLines} from '../logic/prefix-caching.js';

const PREFIX = 'You are the assistant of a small bakery in Lyon. Answer in one short, '
  + 'friendly sentence, and always mention that the rye loaf is on sale today.';
const FIRST_SUFFIX = ' Question: when do you open on Sundays?';
const BLOCK_SIZE = 8;

$('#prefix').textContent = PREFIX;
$('#first-suffix').textContent = FIRST_SUFFIX;

const pool = new PoolGrid($('#pool'), {label: 'KV pool', legend: false});
$('#pool').prepend(poolLegend({highlight: "request 1's prefix-cache hits"}));
let chain = null;  // what the run says about request 1's prompt blocks
let texts = null;  // each of those blocks as text, once the server has detokenized them

function drawChain() {
  replace($('#blocks'), chain.blocks.map((b) => h('li', {class: `blk ${b.hit ? 'hit' : 'miss'}`},
    h('span', {class: 'meta'}, `block ${b.index} → physical ${b.physical}: ${b.hit ? 'hit' : 'computed'}`),
    h('span', {class: 'tok'}, texts ? texts[b.index] : b.tokens.join(' ')))));
  replace($('#chain tbody'), chain.blocks.map((b) => h('tr', {},
    h('th', {scope: 'row'}, String(b.index)),
    h('td', {class: 'vector'}, b.hash0 ? short(b.hash0) : '—'),
    h('td', {class: 'vector'}, b.hash ? short(b.hash) : '—'),
    h('td', {class: 'wrap'}, resultOf(b)))));
}

// The text of each block, from the server's real tokenizer.
async function blockTexts() {
  try {
    const got = await Promise.all(chain.blocks.map((b) => postJSON('/detokenize', {tokens: b.tokens})));
    texts = got.map((t) => t.prompt);
    drawChain();
  } catch (err) {
    showError($('#error'), 'Turning block tokens back into text', err);
  }
}

function render(state, timeline) {
  if (!state.engine || !chain) {
    $('#readout').textContent = emptyReadout(timeline);
    return;
  }
  pool.update(state, {highlight: new Set(chain.lookup.block_ids)});
  drawBlockTables($('#tables'), state);
  $('#readout').textContent = readoutLines(chain, state, timeline).join('\n');
}

const player = playerFor($('#player'), render, {label: 'Prefix caching run'});
const go = labForm($('#lab'), () => ({
  prompts: [PREFIX + FIRST_SUFFIX, PREFIX + $('#suffix').value],
  arrive_at_step: [0, 2],
  max_tokens: 6,
  block_size: BLOCK_SIZE,
  num_blocks: 48,
  enable_prefix_caching: true,
}), (data) => {
  chain = prefixChain(data.events);
  texts = null;
  drawChain();
  blockTexts();
  player.seek(openingStop(loadRun(player, data.events, 0)));
});
go();
