import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {postJSON, showError} from '../api.js';
import {fold, poolSummary} from '../state.js';
import {PoolGrid, drawBlockTables, poolLegend} from '../views.js';
import {labForm, playerFor, loadRun, emptyReadout} from '../lab.js';

const PREFIX = 'You are the assistant of a small bakery in Lyon. Answer in one short, '
  + 'friendly sentence, and always mention that the rye loaf is on sale today.';
const FIRST_SUFFIX = ' Question: when do you open on Sundays?';
const BLOCK_SIZE = 8;
const short = (hash) => hash.slice(0, 12);

$('#prefix').textContent = PREFIX;
$('#first-suffix').textContent = FIRST_SUFFIX;

const pool = new PoolGrid($('#pool'), {label: 'KV pool', legend: false});
$('#pool').prepend(poolLegend({highlight: "request 1's prefix-cache hits"}));
let chain = null;  // what the run says about request 1's prompt blocks

// Request `rid`'s hash per logical block, from its blocks_cached events.
function cachedHashes(events, rid) {
  const out = new Map();
  for (const e of events) {
    if (e.kind === 'blocks_cached' && e.request_id === rid) {
      e.hashes.forEach((hash, j) => out.set(e.first_index + j, {hash, block: e.block_ids[j], step: e.step}));
    }
  }
  return out;
}

function analyse(events) {
  const arrived = events.find((e) => e.kind === 'request_arrived' && e.request_id === '1');
  const lookup = events.find((e) => e.kind === 'prefix_cache_lookup' && e.request_id === '1');
  const freedAt = events.findIndex((e) => e.kind === 'blocks_freed' && e.request_id === '1');
  const table = fold(events, freedAt < 0 ? events.length : freedAt).tables['1'] ?? [];
  const ids = arrived.prompt_token_ids;
  const bs = events[0].block_size;
  const first = cachedHashes(events, '0');
  const second = cachedHashes(events, '1');
  const blocks = [];
  for (let i = 0; i * bs < ids.length; i++) {
    const tokens = ids.slice(i * bs, (i + 1) * bs);
    const hit = i < lookup.block_ids.length;
    const full = tokens.length === bs;
    blocks.push({
      index: i, tokens, full, hit,
      physical: table[i],
      hash: hit ? lookup.hashes[i] : second.get(i)?.hash ?? null,
      hash0: first.get(i)?.hash ?? null,
      cachedStep: second.get(i)?.step ?? null,
    });
  }
  return {lookup, blocks, bs, numTokens: ids.length, texts: null};
}

function resultOf(b) {
  if (b.hit) return `hit: shares physical block ${b.physical}`;
  if (!b.full) return `partial (${b.tokens.length} tokens): never hashed, computed into block ${b.physical}`;
  if (b.hash) return `miss: computed into block ${b.physical}, then cached`;
  return `miss: computed into block ${b.physical}`;
}

function drawChain() {
  replace($('#blocks'), chain.blocks.map((b) => h('li', {class: `blk ${b.hit ? 'hit' : 'miss'}`},
    h('span', {class: 'meta'}, `block ${b.index} → physical ${b.physical}: ${b.hit ? 'hit' : 'computed'}`),
    h('span', {class: 'tok'}, chain.texts ? chain.texts[b.index] : b.tokens.join(' ')))));
  replace($('#chain tbody'), chain.blocks.map((b) => h('tr', {},
    h('th', {scope: 'row'}, String(b.index)),
    h('td', {class: 'vector'}, b.hash0 ? short(b.hash0) : '—'),
    h('td', {class: 'vector'}, b.hash ? short(b.hash) : '—'),
    h('td', {class: 'wrap'}, resultOf(b)))));
}

// The text of each block, from the server's real tokenizer.
async function blockTexts() {
  try {
    const texts = await Promise.all(chain.blocks.map((b) => postJSON('/detokenize', {tokens: b.tokens})));
    chain.texts = texts.map((t) => t.prompt);
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
  const {lookup, blocks} = chain;
  const full = blocks.filter((b) => b.full).length;
  const lines = [
    `request 1 prompt: ${chain.numTokens} tokens, ${full} full blocks of ${chain.bs}`,
    `lookup at admission (step ${lookup.step}): ${lookup.hit_tokens} of ${lookup.queried_tokens} tokens hit`,
    `hit tokens: ${lookup.hit_tokens}`,
    `hit blocks: ${lookup.block_ids.length ? lookup.block_ids.join(', ') : 'none'}`,
    'chain:',
    ...blocks.map((b) => `  block ${b.index}: ${b.hash ? short(b.hash) : 'no hash'} ${resultOf(b)}`),
  ];
  const s = poolSummary(state);
  lines.push(`step ${timeline.lastEvent ? state.step : 0}, event ${timeline.pos} of ${timeline.length}: `
    + `${s.cached} cached evictable, ${s.used + s.shared} held (${s.shared} shared), ${s.free} free`);
  $('#readout').textContent = lines.join('\n');
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
  chain = analyse(data.events);
  drawChain();
  blockTexts();
  const admitted = data.events.findIndex((e) => e.kind === 'prefix_cache_lookup' && e.request_id === '1');
  const timeline = loadRun(player, data.events, 0);
  player.seek(timeline.stops.find((s) => s > admitted) ?? timeline.length);
});
go();
