import '../chrome.js';
import {$, h, replace, pct, reducedMotion} from '../dom.js';
import {API, getJSON, getNdjson, followEvents, showError, clearError} from '../api.js';
import {poolSummary, hitRate, requestsByStatus} from '../state.js';
import {Timeline} from '../timeline.js';
import {Player} from '../player.js';
import {PoolGrid, drawStatusColumns, drawStepChart} from '../views.js';

const READOUT_REQUESTS = 30;
const pool = new PoolGrid($('#pool'), {label: "The server's KV pool"});

function stat(name, value) {
  return h('div', {}, h('dt', {}, name), h('dd', {}, value));
}

function render(state, timeline) {
  if (!state.engine) {
    $('#readout').textContent = 'Waiting for the first event…';
    return;
  }
  const s = poolSummary(state);
  const groups = requestsByStatus(state);
  const c = state.counters;
  const generated = state.order.reduce((n, rid) => n + state.requests[rid].outputTokenIds.length, 0);
  replace($('#stats'),
    stat('step', String(state.step)),
    stat('waiting', String(groups.waiting.length)),
    stat('running', String(groups.running.length)),
    stat('preempted / swapped', `${groups.preempted.length} / ${groups.swapped.length}`),
    stat('finished', String(groups.finished.length + groups.aborted.length)),
    stat('blocks held', `${s.used + s.shared} of ${s.total}`),
    stat('prefix-cache hit rate', pct(hitRate(state))),
    stat('preemptions', String(c.preemptions)));
  drawStatusColumns($('#columns'), state);
  pool.update(state);
  drawStepChart($('#chart'), state.steps);
  const lines = [
    `step ${state.step}, event ${timeline.pos} of ${timeline.length}`,
    `pool: ${s.total} blocks: ${s.used} held by one request, ${s.shared} shared, `
      + `${s.cached} cached, ${s.free} free`,
    `prefix cache: ${c.hitTokens} of ${c.queriedTokens} tokens hit (${pct(hitRate(state))})`,
    `preemptions: ${c.preemptions}; tokens generated (requests shown): ${generated}`,
    `requests (latest ${READOUT_REQUESTS}):`,
  ];
  for (const rid of state.order.slice(-READOUT_REQUESTS)) {
    const r = state.requests[rid];
    const status = r.finishReason && r.status === 'finished' ? `finished (${r.finishReason})` : r.status;
    lines.push(`${rid}: ${status}, prompt ${r.promptTokenIds.length} tokens, `
      + `${r.outputTokenIds.length} generated`);
  }
  $('#readout').textContent = lines.join('\n');
}

async function replay(player) {
  $('#conn').textContent = 'Loading the recorded run…';
  const events = await getNdjson(`${API}/replay`);
  player.setTimeline(new Timeline(events), 0);
  $('#conn').textContent = `Replaying a recorded run: ${events.length} events. `
    + 'Press Play, or step through it.';
  if (!reducedMotion()) player.toggle();
}

function live(player) {
  const messages = {
    connecting: 'Connecting to the live event stream…',
    open: 'Live: following the server\'s engine.',
    dropped: 'This page fell behind the engine; reconnecting for a fresh snapshot…',
    reconnecting: 'Lost the live stream; reconnecting…',
    closed: 'The live stream is closed.',
  };
  let batch = [];
  const flush = () => {
    player.timeline.push(batch);
    batch = [];
    player.grew();
  };
  followEvents(`${API}/live`, (event) => {
    if (batch.length === 0) queueMicrotask(flush);
    batch.push(event);
  }, (status) => {
    $('#conn').textContent = messages[status];
    $('#conn').dataset.state = status;
    if (status === 'open') clearError($('#error'));
    if (status === 'reconnecting') {
      showError($('#error'), 'The live event stream', new Error('the connection was lost; retrying'));
    }
  });
}

const player = new Player($('#player'), new Timeline([], {keepSteps: 240, keepFinished: 500}), render,
                          {live: true, label: 'Monitor timeline'});
try {
  const info = await getJSON(`${API}/info`);
  if (info.replay) {
    player.setFollow(false);
    await replay(player);
  } else if (info.live) {
    live(player);
  } else {
    $('#conn').textContent = 'This server has neither a live event stream nor a recording to replay.';
  }
} catch (err) {
  $('#conn').textContent = '';
  showError($('#error'), 'Starting the monitor', err);
}
