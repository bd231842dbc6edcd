import '../chrome.js';
import {$, h, replace, int, pct} from '../dom.js';
import {poolSummary} from '../state.js';
import {labForm, playerFor, loadRun, prompts, num, emptyReadout} from '../lab.js';

const FIELDS = ['allocated_slots', 'filled_slots', 'reserved_max_model_len',
                'reserved_own_length', 'tokens_held'];

const waste = (reserved, used) => (reserved ? 1 - used / reserved : 0);

// The three schemes on one measurement: [name, slots set aside, slots holding tokens].
function schemes(f, engine) {
  return [
    ['paged', 'allocated', f.allocated_slots, f.filled_slots],
    [`contiguous, max_model_len (${engine.max_model_len}) each`, 'reserved',
     f.reserved_max_model_len, f.tokens_held],
    ['contiguous, prompt + max_tokens each', 'reserved', f.reserved_own_length, f.tokens_held],
  ];
}

// Each bar is one scheme's set-aside slots; the coloured part holds tokens.
function bars(list, rows) {
  replace(list, rows.map(([name, verb, set, used]) => h('li', {},
    h('div', {class: 'bar-label'}, `${name}: ${int(used)} of ${int(set)} ${verb} slots hold tokens `
      + `(${pct(waste(set, used))} unused)`),
    h('div', {class: 'track', role: 'img', 'aria-label': `${name}: ${used} of ${set} slots used`},
      h('div', {class: 'fill reserved', style: {width: set ? '100%' : '0%'}}),
      h('div', {class: 'fill held', style: {width: `${set ? (100 * used) / set : 0}%`}})))));
}

function lineOf([name, verb, set, used]) {
  return `${name}: ${set} slots ${verb}, ${used} hold tokens, ${pct(waste(set, used))} unused`;
}

function render(state, timeline) {
  if (!state.engine) {
    $('#readout').textContent = emptyReadout(timeline);
    return;
  }
  const lines = [`event ${timeline.pos} of ${timeline.length}`];
  const last = state.steps[state.steps.length - 1];
  if (!last) {
    replace($('#now'), h('li', {class: 'note'}, 'No step has run yet.'));
    replace($('#total'));
    lines.push('no step has ended yet');
    $('#readout').textContent = lines.join('\n');
    return;
  }
  const now = schemes(last.fragmentation, state.engine);
  bars($('#now'), now);
  lines.push(`after step ${last.step} (${last.num_running} running, ${last.num_waiting} waiting):`);
  now.forEach((row) => lines.push(`  ${lineOf(row)}`));
  lines.push(`  external waste, paged: none by construction (any of the ${poolSummary(state).freeCount} `
    + 'free blocks can extend any request); contiguous: not simulated');
  const sum = Object.fromEntries(FIELDS.map((k) => [k, 0]));
  for (const s of state.steps) for (const k of FIELDS) sum[k] += s.fragmentation[k];
  const total = schemes(sum, state.engine);
  bars($('#total'), total);
  lines.push(`run so far (slot-steps, steps ${state.steps[0].step}–${last.step}):`);
  total.forEach((row) => lines.push(`  ${lineOf(row)}`));
  $('#readout').textContent = lines.join('\n');
}

const player = playerFor($('#player'), render, {label: 'Fragmentation run'});
const go = labForm($('#lab'), () => ({
  prompts: prompts($('#prompts')),
  block_size: num('#block-size'),
  max_tokens: num('#max-tokens'),
  num_blocks: num('#num-blocks'),
  enable_prefix_caching: false,
}), (data) => loadRun(player, data.events, 'last-step'));
go();
