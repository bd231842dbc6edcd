import '../chrome.js';
import {$, h, replace, bytes, int} from '../dom.js';
import {postJSON} from '../api.js';
import {emptyState, applyEvent, poolSummary, sharing} from '../state.js';
import {PoolGrid, drawBlockTables, poolLegend, colorOf, plural} from '../views.js';
import {describeEvent} from '../describe.js';
import {labForm, playerFor, loadRun, num, emptyReadout} from '../lab.js';

const pool = new PoolGrid($('#pool'), {label: 'KV pool', legend: false, refcounts: true});
$('#pool').prepend(poolLegend({highlight: 'copied at this step (copy-on-write)'}));
let run = null;  // what the loaded run says as a whole (see analyse)

// A range input with its <output> and a spoken value that says what it means.
function rangeWithOutput(id, say) {
  const input = $(`#${id}`);
  const update = () => {
    $(`#${id}-out`).textContent = say(Number(input.value)).shown;
    input.setAttribute('aria-valuetext', say(Number(input.value)).spoken);
  };
  input.addEventListener('input', update);
  update();
}
rangeWithOutput('n', (n) => ({shown: String(n), spoken: plural(n, 'completion')}));
rangeWithOutput('temperature', (t) => ({shown: t.toFixed(1), spoken: `temperature ${t.toFixed(1)}`}));

// The moment the most blocks were held, and what the same block tables would hold
// if every sequence were a separate request with a copy of the prompt of its own.
function peakOf(events) {
  const state = emptyState();
  let best = null;
  for (const e of events) {
    applyEvent(state, e);
    const s = sharing(state);
    if (!best || s.held > best.held) {
      best = {held: s.held, referenced: s.referenced, step: e.step,
              sequences: Object.keys(state.tables).length};
    }
  }
  return best;
}

function analyse(data) {
  const {events} = data;
  const arrived = events.find((e) => e.kind === 'request_arrived');
  const bs = events[0].block_size;
  const promptLen = arrived.prompt_token_ids.length;
  return {
    bs, promptLen,
    bytesPerToken: events[0].kv_bytes_per_token,
    blockBytes: bs * events[0].kv_bytes_per_token,
    promptBlocks: Math.ceil(promptLen / bs),
    fullBlocks: Math.floor(promptLen / bs),
    peak: peakOf(events),
    completions: data.outputs[0].completions,
  };
}

function promptLine() {
  const {promptLen, promptBlocks, bs, fullBlocks} = run;
  const rest = promptLen % bs;
  const how = rest === 0 ? 'all full: nothing to copy'
    : `${fullBlocks} full, the last holds ${rest}`;
  return `prompt: ${promptLen} tokens in ${promptBlocks} blocks of ${bs} (${how})`;
}

function memoryLine() {
  const {peak, promptBlocks} = run;
  const own = peak.referenced - peak.sequences * promptBlocks;
  return `memory at the peak, computed from this run's sizes: ${peak.held} blocks held with `
    + `sharing (step ${peak.step}); as ${peak.sequences} separate requests: ${peak.sequences} × `
    + `${promptBlocks} prompt blocks + ${own} blocks of their own = ${peak.referenced}`;
}

function drawMemory() {
  const {peak, promptBlocks, blockBytes} = run;
  const own = peak.referenced - peak.sequences * promptBlocks;
  const most = Math.max(1, peak.referenced);
  const bar = (label, blocks, cls) => h('li', {},
    h('div', {class: 'bar-label'}, `${label}: ${plural(blocks, 'block')} = ${bytes(blocks * blockBytes)}`),
    h('div', {class: 'track', role: 'img', 'aria-label': `${label}: ${blocks} blocks`},
      h('div', {class: `fill ${cls}`, style: {width: `${(100 * blocks) / most}%`}})));
  replace($('#memory'),
    bar(`with sharing, this run at its peak (step ${peak.step})`, peak.held, 'held'),
    bar(`${peak.sequences} separate requests: ${peak.sequences} × ${promptBlocks} prompt blocks `
      + `+ ${own} of their own`, peak.referenced, ''));
  const saved = peak.referenced - peak.held;
  $('#memory-note').textContent = 'The first bar is what the engine held, from its events. The '
    + 'second is computed from this run\'s sizes, not measured: the same block tables with nothing '
    + `shared (prompt ${run.promptLen} tokens; a block is ${run.bs} tokens × `
    + `${int(run.bytesPerToken)} bytes per token = ${bytes(blockBytes)}). `
    + `Sharing saved ${plural(saved, 'block')} (${bytes(saved * blockBytes)}).`;
}

function drawCompletions(state, timeline) {
  const seqs = state.order;
  if (timeline.atEnd && timeline.length) {
    replace($('#completions'), run.completions.map((c) => h('li', {},
      h('span', {class: 'meta'}, `${c.token_ids.length} tokens, ${c.finish_reason}: `),
      h('span', {class: 'text'}, c.text))));
    return;
  }
  replace($('#completions'), seqs.length ? seqs.map((rid) => h('li', {},
    h('span', {class: 'meta'}, h('span', {class: 'req-chip', style: {background: colorOf(state, rid)}}),
      ` sequence ${rid}, so far: `),
    h('span', {class: 'text'}, state.requests[rid].text))) : h('li', {class: 'note'}, 'No sequence yet.'));
}

function render(state, timeline) {
  if (!state.engine || !run) {
    $('#readout').textContent = emptyReadout(timeline);
    return;
  }
  const seen = timeline.events.slice(0, timeline.pos);
  const copies = seen.filter((e) => e.kind === 'copy_on_write');
  const now = new Set(copies.filter((e) => e.step === state.step).map((e) => e.dst_block_id));
  pool.update(state, {highlight: now});
  drawBlockTables($('#tables'), state, state.order, {highlight: now, shared: true});
  replace($('#copies'), copies.length
    ? copies.map((e) => h('li', {}, `step ${e.step}: ${describeEvent(e)}`))
    : h('li', {}, 'none yet'));
  drawCompletions(state, timeline);
  const s = sharing(state);
  const lines = [
    `step ${timeline.lastEvent ? state.step : 0}, event ${timeline.pos} of ${timeline.length}`,
    promptLine(),
  ];
  for (const rid of state.order) {
    const req = state.requests[rid];
    lines.push(`sequence ${rid} (${req.status}, ${req.numComputed} tokens computed, `
      + `${req.outputTokenIds.length} generated): [${(state.tables[rid] ?? []).join(', ')}]`);
  }
  lines.push(`shared blocks: ${s.shared.length
    ? s.shared.map(([id, ref]) => `${id} (refcount ${ref})`).join(', ') : 'none'}`);
  lines.push(`copy-on-write copies so far: ${copies.length}`);
  const p = poolSummary(state);
  lines.push(`free blocks: ${p.freeCount} of ${p.total}`);
  lines.push(`blocks held: ${s.held}; the same tables without sharing: ${s.referenced}`);
  lines.push(memoryLine());
  if (timeline.atEnd) {
    lines.push('completions:');
    run.completions.forEach((c, i) => lines.push(`  ${i}: ${JSON.stringify(c.text)}`));
  }
  $('#readout').textContent = lines.join('\n');
}

const player = playerFor($('#player'), render, {label: 'Parallel sampling run'});

const go = labForm($('#lab'), async () => {
  const n = num('#n');
  const bs = num('#block-size');
  const maxTokens = num('#max-tokens');
  const prompt = $('#prompt').value;
  // a pool with room for the prompt and every sequence's own blocks (and its copy)
  const {count} = await postJSON('/tokenize', {prompt});
  const room = Math.ceil(count / bs) + n * (Math.ceil(maxTokens / bs) + 1) + 4;
  return {
    prompts: [prompt],
    n,
    temperature: num('#temperature'),
    seed: num('#seed'),
    block_size: bs,
    max_tokens: maxTokens,
    num_blocks: Number.isFinite(room) ? Math.max(8, Math.min(512, room)) : 64,
    enable_prefix_caching: false,
  };
}, (data) => {
  run = analyse(data);
  drawMemory();
  loadRun(player, data.events, 'first-step');
});
go();
