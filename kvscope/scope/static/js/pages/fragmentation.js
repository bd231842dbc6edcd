import '../chrome.js';
import {$, h, replace, int, pct} from '../dom.js';
import {labForm, playerFor, loadRun, prompts, num, emptyReadout} from '../lab.js';
import {waste, schemes, runTotals, readoutLines} from '../logic/fragmentation.js';

// Each bar is one scheme's set-aside slots; the coloured part holds tokens.
function bars(list, rows) {
  replace(list, rows.map(([name, verb, set, used]) => h('li', {},
    h('div', {class: 'bar-label'}, `${name}: ${int(used)} of ${int(set)} ${verb} slots hold tokens `
      + `(${pct(waste(set, used))} unused)`),
    h('div', {class: 'track', role: 'img', 'aria-label': `${name}: ${used} of ${set} slots used`},
      h('div', {class: 'fill reserved', style: {width: set ? '100%' : '0%'}}),
      h('div', {class: 'fill held', style: {width: `${set ? (100 * used) / set : 0}%`}})))));
}

function render(state, timeline) {
  if (!state.engine) {
    $('#readout').textContent = emptyReadout(timeline);
    return;
  }
  const last = state.steps[state.steps.length - 1];
  if (last) {
    bars($('#now'), schemes(last.fragmentation, state.engine));
    bars($('#total'), schemes(runTotals(state.steps), state.engine));
  } else {
    replace($('#now'), h('li', {class: 'note'}, 'No step has run yet.'));
    replace($('#total'));
  }
  $('#readout').textContent = readoutLines(state, timeline).join('\n');
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
