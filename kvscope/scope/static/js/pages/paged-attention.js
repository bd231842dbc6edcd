import '../chrome.js';
import {$} from '../dom.js';
import {PoolGrid, drawBlockTables} from '../views.js';
import {labForm, playerFor, loadRun, prompts, num, emptyReadout} from '../lab.js';
import {readoutLines, arrivalSteps} from '../logic/paged-attention.js';

const pool = new PoolGrid($('#pool'), {label: 'KV pool'});

function render(state, timeline) {
  if (!state.engine) {
    $('#readout').textContent = emptyReadout(timeline);
    return;
  }
  pool.update(state);
  drawBlockTables($('#tables'), state);
  $('#readout').textContent = readoutLines(state, timeline).join('\n');
}

const player = playerFor($('#player'), render, {label: 'Paged attention run'});

const go = labForm($('#lab'), () => {
  const list = prompts($('#prompts'));
  return {
    prompts: list,
    block_size: num('#block-size'),
    num_blocks: num('#num-blocks'),
    max_tokens: num('#max-tokens'),
    arrive_at_step: arrivalSteps(list.length, num('#stagger')),
    enable_prefix_caching: false,
  };
}, (data) => loadRun(player, data.events));

go();
