import '../chrome.js';
import {$, h, replace, bytes} from '../dom.js';
import {postJSON} from '../api.js';
import {PoolGrid, drawBlockTables, poolLegend, colorOf, plural} from '../views.js';
import {describeEvent} from '../describe.js';
import {labForm, playerFor, loadRun, num, emptyReadout} from '../lab.js';
import {samplingRun, memoryBars, memoryNote, copiesSoFar, copiedAt, readoutLines, poolBlocks}
  from '../logic/parallel-sampling.js';

const pool = new PoolGrid($('#pool'), {label: 'KV pool', legend: false, refcounts: true});
$('#pool').prepend(poolLegend({highlight: 'copied at this step (copy-on-write)'}));
let run = null;  // what the loaded run says as a whole (see samplingRun)

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

function drawMemory() {
  const most = Math.max(1, run.peak.referenced);
  replace($('#memory'), memoryBars(run).map(({label, blocks, kind}) => h('li', {},
    h('div', {class: 'bar-label'}, `${label}: ${plural(blocks, 'block')} = ${bytes(blocks * run.blockBytes)}`),
    h('div', {class: 'track', role: 'img', 'aria-label': `${label}: ${blocks} blocks`},
      h('div', {class: `fill ${kind}`, style: {width: `${(100 * blocks) / most}%`}})))));
  $('#memory-note').textContent = memoryNote(run);
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
  const copies = copiesSoFar(timeline);
  const now = copiedAt(copies, state.step);
  pool.update(state, {highlight: now});
  drawBlockTables($('#tables'), state, state.order, {highlight: now, shared: true});
  replace($('#copies'), copies.length
    ? copies.map((e) => h('li', {}, `step ${e.step}: ${describeEvent(e)}`))
    : h('li', {}, 'none yet'));
  drawCompletions(state, timeline);
  $('#readout').textContent = readoutLines(run, state, timeline).join('\n');
}

const player = playerFor($('#player'), render, {label: 'Parallel sampling run'});

const go = labForm($('#lab'), async () => {
  const n = num('#n');
  const bs = num('#block-size');
  const maxTokens = num('#max-tokens');
  const prompt = $('#prompt').value;
  // a pool with room for the prompt and every sequence's own blocks (and its copy)
  const {count} = await postJSON('/tokenize', {prompt});
  return {
    prompts: [prompt],
    n,
    temperature: num('#temperature'),
    seed: num('#seed'),
    block_size: bs,
    max_tokens: maxTokens,
    num_blocks: poolBlocks(count, bs, maxTokens, n),
    enable_prefix_caching: false,
  };
}, (data) => {
  run = samplingRun(data);
  drawMemory();
  loadRun(player, data.events, 'first-step');
});
go();
