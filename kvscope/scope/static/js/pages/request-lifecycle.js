import '../chrome.js';
import {$, h, replace, svg, throttled} from '../dom.js';
import {API, getJSON, followEvents, showError, clearError} from '../api.js';
import {labForm} from '../lab.js';
import {FOLLOWED, STAGE_NAMES, STRIP_NAMES, at, followable, lifecycle, lifecycleBody, readoutLines,
  stripSummary} from '../logic/request-lifecycle.js';

let labLife = null;  // the lab run's lifecycle, once run
let liveEvents = [];  // the live stream's events since the page connected
let following = null;  // the live request id being followed, or null (the lab run)
let closeLive = null;
const MAX_LIVE_EVENTS = 100000;

$('#workload').textContent = JSON.stringify(lifecycleBody(), null, 2);

// -- the pictures --------------------------------------------------------------------------

function drawStrip(life) {
  const W = 600;
  const H = 46;
  const n = Math.max(1, life.numSteps);
  const w = W / n;
  const summary = stripSummary(life);
  const chart = svg('svg', {viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': summary});
  for (const [i, s] of life.strip.entries()) {
    const label = `step ${s.step}: ${STRIP_NAMES[s.what]}${s.tokens ? `, ${s.tokens} tokens` : ''}`
      + `${s.what === 'verify' ? `, ${s.accepted} drafts accepted` : ''}`;
    const rect = svg('rect', {x: i * w + 0.5, y: 4, width: Math.max(1, w - 1), height: 24, class: `lc-${s.what}`});
    rect.append(svg('title', {}, label));
    chart.append(rect);
    if (w >= 14 && s.tokens) {
      chart.append(svg('text', {x: i * w + w / 2, y: 20, class: 'lc-num', 'text-anchor': 'middle'}, String(s.tokens)));
    }
  }
  const first = life.strip[0]?.step ?? 0;
  chart.append(svg('text', {x: 2, y: H - 3, class: 'axis'},
    `steps ${first}–${first + life.numSteps - 1} (numbers: tokens the step computed for it)`));
  replace($('#strip'), chart, h('p', {class: 'note'}, summary));
}

function drawTables(life) {
  const rows = Math.max(1, ...life.tables.map((t) => t.table.length));
  const cell = 22;
  const left = 34;
  const top = 14;
  const W = left + life.tables.length * cell + 4;
  const H = top + rows * 16 + 18;
  const held = life.tables.filter((t) => t.table.length).length;
  const most = Math.max(0, ...life.tables.map((t) => t.table.length));
  const label = `Request ${life.rid}'s block table at the end of each of ${life.tables.length} steps: `
    + `it held blocks at ${held} of them, at most ${most} blocks at once.`;
  const chart = svg('svg', {viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', 'aria-label': label});
  life.tables.forEach((t, col) => {
    const x = left + col * cell;
    chart.append(svg('text', {x: x + cell / 2, y: 10, class: 'axis', 'text-anchor': 'middle'}, String(t.step)));
    t.table.forEach((id, row) => {
      const y = top + row * 16;
      const rect = svg('rect', {x: x + 1, y, width: cell - 2, height: 14,
                                class: row < t.hits ? 'lc-hit' : 'lc-own'});
      rect.append(svg('title', {}, `step ${t.step}: logical block ${row} → physical block ${id}`
        + `${row < t.hits ? ' (from the prefix cache)' : ''}`));
      chart.append(rect);
      chart.append(svg('text', {x: x + cell / 2, y: y + 11, class: 'lc-id', 'text-anchor': 'middle'}, String(id)));
    });
  });
  for (let row = 0; row < rows; row += 1) {
    chart.append(svg('text', {x: 2, y: top + row * 16 + 11, class: 'axis'}, `#${row}`));
  }
  chart.append(svg('text', {x: 2, y: H - 3, class: 'axis'}, 'engine step →'));
  replace($('#table-picture'), chart, h('p', {class: 'note'}, label));
}

function drawRows(life) {
  replace($('#rows tbody'), life.rows.map((row) => h('tr', {class: `lc-row-${row.stage}`, 'data-stage': row.stage},
    h('th', {scope: 'row'}, STAGE_NAMES[row.stage]),
    h('td', {}, row.stage === 'waiting' ? `${row.step}–${row.to}` : String(row.step)),
    h('td', {}, at(row.time)),
    h('td', {class: 'wrap lc-kinds'}, row.kinds.join(', ')),
    h('td', {class: 'lc-blocks'}, row.table.length
      ? h('ol', {class: 'lc-chips', 'aria-label': `blocks ${row.table.join(', ')}`},
        row.table.map((id) => h('li', {}, String(id))))
      : h('span', {class: 'note'}, 'none')),
    h('td', {class: 'wrap'}, row.text))));
}

function show(life, source) {
  drawStrip(life);
  drawTables(life);
  drawRows(life);
  $('#readout').textContent = readoutLines(life, source).join('\n');
}

// -- the lab run ------------------------------------------------------------------------------

labForm($('#lab'), () => lifecycleBody(), (data) => {
  labLife = lifecycle(data.events, FOLLOWED);
  stopFollowing();
  show(labLife, 'lab run');
});

// -- the live server --------------------------------------------------------------------------

const liveStatus = $('#live-status');
const pick = $('#live-pick');

function stopFollowing() {
  following = null;
  $('#lab-show').hidden = true;
}

const refresh = throttled(() => {
  const list = followable(liveEvents);
  const chosen = pick.value;
  replace(pick, list.length
    ? list.slice(0, 50).map((r) => h('option', {value: r.rid, selected: r.rid === chosen}, `${r.rid} (${r.status})`))
    : h('option', {value: ''}, 'none seen yet'));
  pick.disabled = !list.length;
  $('#live-show').disabled = !list.length;
  if (following !== null) show(lifecycle(liveEvents, following), 'live server');
});

async function connect() {
  $('#live-connect').disabled = true;
  try {
    const info = await getJSON(`${API}/info`);
    if (!info.live) {
      liveStatus.textContent = 'This server has no live event stream (it may be replaying a recording).';
      $('#live-connect').disabled = false;
      return;
    }
  } catch (err) {
    showError($('#error'), 'Asking the server about its live stream', err);
    $('#live-connect').disabled = false;
    return;
  }
  const words = {
    connecting: 'Connecting to the live event stream…',
    open: 'Connected: requests the server receives from now on appear in the list.',
    dropped: 'This page fell behind the engine; reconnecting (the list starts again)…',
    reconnecting: 'Lost the live stream; reconnecting…',
    closed: 'The live stream is closed.',
  };
  closeLive = followEvents(`${API}/live`, (event) => {
    if (event.kind === 'snapshot') liveEvents = [];  // a (re)connection starts from a fresh state
    if (liveEvents.length >= MAX_LIVE_EVENTS) {  // a gap would break the fold: stop here
      closeLive?.();
      liveStatus.textContent = `Stopped after ${MAX_LIVE_EVENTS} events; reload the page to follow newer requests.`;
      return;
    }
    liveEvents.push(event);
    refresh();
  }, (status) => {
    liveStatus.textContent = words[status];
    if (status === 'open') clearError($('#error'));
    if (status === 'closed') $('#live-connect').disabled = false;
  });
}

$('#live-connect').addEventListener('click', () => {
  if (!closeLive) connect();
});
$('#live-show').addEventListener('click', () => {
  if (!pick.value) return;
  following = pick.value;
  $('#lab-show').hidden = labLife === null;
  show(lifecycle(liveEvents, following), 'live server');
});
$('#lab-show').addEventListener('click', () => {
  stopFollowing();
  if (labLife) show(labLife, 'lab run');
});
