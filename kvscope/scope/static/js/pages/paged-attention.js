import '../chrome.js';
import {$} from '../dom.js';
import {poolSummary} from '../state.js';
import {PoolGrid, drawBlockTables} from '../views.js';
import {labForm, playerFor, loadRun, prompts, num, emptyReadout} from '../lab.js';

const pool = new PoolGrid($('#pool'), {label: 'KV pool'});

function render(state, timeline) {
  if (!state.engine) {
    $('#readout').textContent = emptyReadout(timeline);
    return;
  }
  pool.update(state);
  drawBlockTables($('#tables'), state);
  const s = poolSummary(state);
  const lines = [
    `step ${timeline.lastEvent ? state.step : 0}, event ${timeline.pos} of ${timeline.length}`,
    `block size: ${state.engine.block_size} tokens`,
    `free blocks: ${s.freeCount} of ${s.total}`,
  ];
  for (const rid of state.order) {
    const req = state.requests[rid];
    lines.push(`request ${rid} (${req.status}, ${req.numComputed} tokens computed): `
      + `[${(state.tables[rid] ?? []).join(', ')}]`);
  }
  $('#readout').textContent = lines.join('\n');
}

const player = playerFor($('#player'), render, {label: 'Paged attention run'});

const go = labForm($('#lab'), () => {
  const list = prompts($('#prompts'));
  const stagger = num('#stagger');
  return {
    prompts: list,
    block_size: num('#block-size'),
    num_blocks: num('#num-blocks'),
    max_tokens: num('#max-tokens'),
    arrive_at_step: list.map((_, i) => i * (Number.isFinite(stagger) ? stagger : 0)),
    enable_prefix_caching: false,
  };
}, (data) => loadRun(player, data.events));

go();
