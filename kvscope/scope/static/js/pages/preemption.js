import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {PoolGrid, SwapGrid, drawBlockTables, drawStatusColumns, poolLegend} from '../views.js';
import {describeEvent} from '../describe.js';
import {labForm, playerFor, loadRun, prompts, num, emptyReadout} from '../lab.js';
import {latestVictim, victimBlocks, preemptionLog, openingStop, readoutLines} from '../logic/preemption.js';

const pool = new PoolGrid($('#pool'), {legend: false});
$('#pool').prepend(poolLegend({highlight: "the latest victim's blocks"}));
const swap = new SwapGrid($('#swap'));

function render(state, timeline) {
  if (!state.engine) {
    $('#readout').textContent = emptyReadout(timeline);
    return;
  }
  const highlight = victimBlocks(latestVictim(timeline.events, timeline.pos), state);
  pool.update(state, {highlight});
  swap.update(state);
  drawStatusColumns($('#columns'), state);
  drawBlockTables($('#tables'), state, state.order, {highlight});
  const log = preemptionLog(timeline.events.slice(0, timeline.pos));
  replace($('#log'), log.length ? log.map((e) => h('li', {}, `step ${e.step}: ${describeEvent(e)}`))
    : h('li', {}, 'none yet'));
  $('#readout').textContent = readoutLines(state, timeline).join('\n');
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
}), (data) => player.seek(openingStop(loadRun(player, data.events, 0))));
for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.addEventListener('change', () => go());
}
go();
