import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {requestsByStatus} from '../state.js';
import {PoolGrid, SwapGrid, drawBlockTables, drawStatusColumns, poolLegend} from '../views.js';
import {describeEvent} from '../describe.js';
import {labForm, playerFor, loadRun, prompts, num, emptyReadout} from '../lab.js';

const pool = new PoolGrid($('#pool'), {legend: false});
$('#pool').prepend(poolLegend({highlight: "the latest victim's blocks"}));
const swap = new SwapGrid($('#swap'));
const RELEVANT = new Set(['preempted', 'swapped_out', 'swapped_in']);

// The latest preemption at or before `pos`, what left with it and how it came back.
export function latestVictim(events, pos) {
  let at = -1;
  for (let i = pos - 1; i >= 0; i--) {
    if (events[i].kind === 'preempted') { at = i; break; }
  }
  if (at < 0) return null;
  const p = events[at];
  const rid = p.request_id;
  let out = null;
  for (let i = at - 1; i >= 0 && !out; i--) {
    const e = events[i];
    if (e.request_id !== rid) continue;
    if (e.kind === 'swapped_out' || e.kind === 'blocks_freed') out = e;
  }
  let back = null;
  for (let i = at + 1; i < pos && !back; i++) {
    const e = events[i];
    if (e.request_id !== rid) continue;
    if (e.kind === 'swapped_in' || (e.kind === 'request_scheduled' && e.resumed)) back = e;
  }
  return {rid, mode: p.mode, step: p.step, out, back};
}

function outText(v) {
  if (!v.out) return 'held no blocks';
  if (v.out.kind === 'swapped_out') {
    return `blocks copied to swap: ${v.out.copies.map(([b, s]) => `${b}→slot ${s}`).join(', ')}`;
  }
  return `blocks freed, K/V dropped: ${v.out.block_ids.join(', ')}`;
}

function backText(v) {
  if (!v.back) return 'not yet';
  if (v.back.kind === 'swapped_in') {
    return `step ${v.back.step}, copied back: ${v.back.copies.map(([s, b]) => `slot ${s}→${b}`).join(', ')}`;
  }
  return `step ${v.back.step}, admitted again with ${v.back.num_computed_tokens} tokens computed: `
    + 'recomputes its prompt and generated tokens';
}

function render(state, timeline) {
  if (!state.engine) {
    $('#readout').textContent = emptyReadout(timeline);
    return;
  }
  const v = latestVictim(timeline.events, timeline.pos);
  let highlight = new Set();
  if (v) {
    if (v.back) highlight = new Set(state.tables[v.rid] ?? []);
    else if (v.out) highlight = new Set(v.out.kind === 'swapped_out' ? v.out.copies.map(([b]) => b) : v.out.block_ids);
  }
  pool.update(state, {highlight});
  swap.update(state);
  drawStatusColumns($('#columns'), state);
  drawBlockTables($('#tables'), state, state.order, {highlight});
  // preemptions and swaps, and the blocks a recompute victim let go of just before
  const seen = timeline.events.slice(0, timeline.pos);
  const log = seen.filter((e, i) => RELEVANT.has(e.kind) || (e.kind === 'blocks_freed'
    && seen[i + 1]?.kind === 'preempted' && seen[i + 1].request_id === e.request_id
    && seen[i + 1].mode === 'recompute'));
  replace($('#log'), log.length ? log.map((e) => h('li', {}, `step ${e.step}: ${describeEvent(e)}`))
    : h('li', {}, 'none yet'));
  const c = state.counters;
  const lines = [
    `mode: ${state.engine.preemption_mode}`,
    `step ${timeline.lastEvent ? state.step : 0}, event ${timeline.pos} of ${timeline.length}`,
    `statuses: ${state.order.map((rid) => `${rid} ${state.requests[rid].status}`).join(', ')}`,
    `preemptions: ${c.preemptions} (swap outs ${c.swapOuts}, swap ins ${c.swapIns})`,
  ];
  if (v) {
    lines.push(`victim: request ${v.rid} (${v.mode}, step ${v.step})`);
    lines.push(`  out: ${outText(v)}`);
    lines.push(`  back: ${backText(v)}`);
  } else {
    lines.push('victim: none yet');
  }
  const waiting = requestsByStatus(state);
  lines.push(`free blocks: ${state.blocks.filter((b) => b.ref === 0).length} of ${state.blocks.length}`
    + `; swapped out: ${waiting.swapped.length ? waiting.swapped.join(', ') : 'none'}`);
  $('#readout').textContent = lines.join('\n');
}

const player = playerFor($('#player'), render, {label: 'Preemption run'});
const mode = () => $('#lab').querySelector('input[name="mode"]:checked').value;
const go = labForm($('#lab'), () => ({
  prompts: prompts($('#prompts')),
  num_blocks: num('#num-blocks'),
  block_size: num('#block-size'),
  max_tokens: num('#max-tokens'),
  preemption_mode: mode(),
  swap_blocks: 32,
  enable_prefix_caching: false,
}), (data) => {
  const timeline = loadRun(player, data.events, 0);
  const first = data.events.findIndex((e) => e.kind === 'preempted');
  player.seek(first < 0 ? timeline.stops[0] : timeline.stops.find((s) => s > first) ?? timeline.length);
});
for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.addEventListener('change', () => go());
}
go();
