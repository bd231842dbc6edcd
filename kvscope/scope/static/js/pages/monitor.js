import '../chrome.js';
import {$, h, replace, reducedMotion} from '../dom.js';
import {API, getJSON, getNdjson, followEvents, showError, clearError} from '../api.js';
import {Timeline} from '../timeline.js';
import {Player} from '../player.js';
import {PoolGrid, drawStatusColumns, drawStepChart} from '../views.js';
import {monitorStats, readoutLines} from '../logic/monitor.js';

const pool = new PoolGrid($('#pool'), {label: "The server's KV pool"});

function stat(name, value) {
  return h('div', {}, h('dt', {}, name), h('dd', {}, value));
}

function render(state, timeline) {
  if (!state.engine) {
    $('#readout').textContent = 'Waiting for the first event…';
    return;
  }
  replace($('#stats'), monitorStats(state).map(([name, value]) => stat(name, value)));
  drawStatusColumns($('#columns'), state);
  pool.update(state);
  drawStepChart($('#chart'), state.steps);
  $('#readout').textContent = readoutLines(state, timeline).join('\n');
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
