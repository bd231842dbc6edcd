import '../chrome.js';
import {$, h, replace, svg} from '../dom.js';
import {API, getJSON, runLab, clearError} from '../api.js';
import {Stepper} from '../stepper.js';
import {PoolGrid, drawBlockTables, plural} from '../views.js';
import {STOPS, computedLines, stopReadout} from '../logic/tour.js';

const results = new Map();  // stop index -> what its run(s) showed
let engine = null;  // the server's engine description (for the computed lines)
let current = 0;
let queue = Promise.resolve();  // one run at a time; a stop left behind is not run

// -- pictures ---------------------------------------------------------------------------------

function lanePicture(list, label) {
  const steps = list[0]?.cells.length ?? 0;
  const W = 600;
  const row = 14;
  const left = 22;
  const w = (W - left) / Math.max(1, steps);
  const pic = svg('svg', {viewBox: `0 0 ${W} ${list.length * row + 14}`, role: 'img', 'aria-label': label});
  list.forEach((lane, i) => {
    pic.append(svg('text', {x: 2, y: i * row + 11, class: 'axis'}, lane.rid));
    lane.cells.forEach((c, s) => {
      if (c.state === 'absent' || c.state === 'finished') return;
      pic.append(svg('rect', {x: left + s * w + 0.5, y: i * row + 1, width: Math.max(1, w - 1), height: row - 2,
                              class: `tour-${c.state}`}));
    });
  });
  pic.append(svg('text', {x: left, y: list.length * row + 12, class: 'axis'}, `${plural(steps, 'step')} →`));
  return pic;
}

const DRAW = {
  paged(r, box) {
    const pool = h('div');
    const tables = h('div');
    box.append(pool, tables);
    new PoolGrid(pool, {label: 'KV pool'}).update(r.state);
    drawBlockTables(tables, r.state);
    return `The pool after step ${r.state.step}: each colour is one request's blocks, wherever they fell.`;
  },
  batching(r, box) {
    box.append(h('p', {class: 'note'}, `continuous: ${plural(r.continuous.steps, 'step')}`),
      lanePicture(r.lanes, `Continuous batching, ${r.continuous.steps} steps: one lane per request`),
      h('p', {class: 'note'}, `static: ${plural(r.fixed.steps, 'step')}`),
      lanePicture(r.staticLanes, `Static batching, ${r.fixed.steps} steps: one lane per request`));
    return 'One lane per request, one column per step: orange prefill, blue decode, pale waiting, '
      + 'grey a seat kept by a finished request until its static batch is done.';
  },
  prefix(r, box) {
    box.append(h('ol', {class: 'tokens', 'aria-label': 'Request 1\'s prompt blocks'}, r.chain.blocks.map((b) =>
      h('li', {class: `blk ${b.hit ? 'hit' : 'miss'}`},
        `block ${b.index}`, h('span', {class: 'meta'}, b.hit ? `hit: shares block ${b.physical}`
          : `computed into block ${b.physical}`)))));
    return 'The second request\'s prompt, block by block: green blocks were found in the cache, the others computed.';
  },
  speculative(r, box) {
    const k = r.run.spec.num_speculative_tokens;
    const W = 600;
    const H = 90;
    const bw = Math.min(60, W / Math.max(1, r.run.passes.length));
    const unit = 70 / (k + 1);
    const pic = svg('svg', {viewBox: `0 0 ${W} ${H}`, role: 'img',
                            'aria-label': `${r.run.passes.length} verifying passes: ${r.drafts} drafts, ${r.accepted} accepted`});
    r.run.passes.forEach((p, i) => {
      const x = i * bw + 2;
      const base = 76;
      pic.append(svg('rect', {x, y: base - p.accepted * unit, width: bw - 4, height: p.accepted * unit, class: 'tour-acc'}));
      pic.append(svg('rect', {x, y: base - p.drafts.length * unit, width: bw - 4,
                              height: (p.drafts.length - p.accepted) * unit, class: 'tour-rej'}));
    });
    pic.append(svg('text', {x: 2, y: H - 2, class: 'axis'}, 'one bar per verifying pass: accepted drafts (green), rejected (red)'));
    box.append(pic);
    return `Drafts per pass, at most ${k}.`;
  },
  chunked(r, box) {
    const {steps} = r.fig;
    const W = 600;
    const H = 100;
    const most = Math.max(1, ...steps.map((s) => s.tokens));
    const bw = W / Math.max(1, steps.length);
    const pic = svg('svg', {viewBox: `0 0 ${W} ${H}`, role: 'img',
                            'aria-label': `${plural(steps.length, 'step')}; the long prompt's chunks: ${r.fig.chunks.join(', ')} tokens`});
    steps.forEach((s, i) => {
      const x = i * bw + 1;
      const chunkH = (s.chunk / most) * 70;
      const restH = ((s.tokens - s.chunk) / most) * 70;
      pic.append(svg('rect', {x, y: 80 - chunkH, width: Math.max(1, bw - 2), height: chunkH, class: 'tour-chunk'}));
      pic.append(svg('rect', {x, y: 80 - chunkH - restH, width: Math.max(1, bw - 2), height: restH, class: 'tour-other'}));
    });
    pic.append(svg('text', {x: 2, y: H - 4, class: 'axis'}, `tokens per step (budget ${r.fig.budget}): long prompt's chunk (dark), everyone else (light)`));
    box.append(pic);
    return 'Each bar is one step; the long prompt takes what the others leave of the budget.';
  },
  tensor(r, box) {
    box.append(h('ul', {class: 'bars'}, r.shares.map((s, i) => h('li', {},
      h('span', {class: 'bar-label'}, `rank ${s.rank}: ${(100 * s.share).toFixed(1)}% of each layer's weights`),
      h('div', {class: 'track', role: 'img', 'aria-label': `rank ${s.rank}: ${(100 * s.share).toFixed(1)}%`},
        h('div', {class: `fill tour-rank${i}`, style: {width: `${(100 * s.share).toFixed(1)}%`}}))))));
    return 'Measured from the two worker processes\' own shards of the model.';
  },
  disagg(r, box) {
    const load = r.load;
    box.append(h('ol', {class: 'tour-flow'},
      h('li', {}, h('strong', {}, 'prefill engine'), h('span', {class: 'meta'}, `${plural(r.data.prefill.stats.num_steps, 'step')}`)),
      h('li', {class: 'arrow'}, load && load.ok ? `K/V: ${plural(load.num_tokens, 'token')}, ${(1000 * load.seconds).toFixed(2)} ms` : 'no K/V moved'),
      h('li', {}, h('strong', {}, 'decode engine'), h('span', {class: 'meta'}, `${plural(r.data.decode.stats.num_steps, 'step')}`))));
    return 'The request\'s path: computed on one engine, its keys and values moved, answered on the other.';
  },
};

// -- a stop -------------------------------------------------------------------------------------

function showStop(index) {
  current = index;
  const stop = STOPS[index];
  $('#stop-title').textContent = `${index + 1}. ${stop.title}`;
  replace($('#stop-says'), stop.says.map((s) => h('li', {}, s)));
  const link = $('#stop-link');
  link.href = `${stop.lesson}.html`;
  link.textContent = `Open the lesson: ${stop.title}`;
  const button = $('#stop-run');
  button.hidden = !stop.heavy;
  button.textContent = `Run it on the server (${stop.wait ?? ''})`.replace(' ()', '');
  clearError($('#error'));
  $('#status').textContent = '';
  const done = results.get(index);
  if (done) {
    draw(index, done);
  } else if (stop.heavy) {
    replace($('#picture'), h('p', {class: 'note'}, 'No run yet: press the button to start one.'));
    const lines = computedLines(stop, engine);
    $('#picture-note').textContent = lines[0];
    $('#readout').textContent = stopReadout(index, ['no run yet', ...lines]).join('\n');
  } else {
    replace($('#picture'), h('p', {class: 'note'}, 'Running the engine…'));
    $('#picture-note').textContent = '';
    $('#readout').textContent = stopReadout(index, ['running the engine on the server…']).join('\n');
    fetchStop(index);
  }
}

function draw(index, result) {
  if (index !== current) return;
  const box = h('div');
  replace($('#picture'), box);
  $('#picture-note').textContent = DRAW[STOPS[index].id](result, box);
  $('#readout').textContent = stopReadout(index, result.lines).join('\n');
}

function fetchStop(index) {
  queue = queue.then(async () => {
    if (results.has(index) || (index !== current && !STOPS[index].heavy)) return;
    const stop = STOPS[index];
    const button = stop.heavy ? $('#stop-run') : null;
    const responses = [];
    for (const run of stop.runs) {
      const data = await runLab(run.body, {button, statusEl: index === current ? $('#status') : null,
                                           errorEl: $('#error'), path: run.path,
                                           label: `The run of stop ${index + 1} (${stop.title})`});
      if (!data) {
        if (index === current) {
          replace($('#picture'), h('p', {class: 'note'}, 'The run failed; see the message above.'));
          $('#readout').textContent = stopReadout(index, ['the run failed']).join('\n');
        }
        return;
      }
      responses.push(data);
    }
    const result = stop.analyse(responses);
    results.set(index, result);
    draw(index, result);
  });
}

$('#stop-run').addEventListener('click', () => fetchStop(current));

const stepper = new Stepper(document.querySelector('[data-stepper="stop"]'), showStop);

// arrow keys move between stops anywhere in the tour but in a control that uses them
$('#tour').addEventListener('keydown', (event) => {
  if (event.target.matches('input, select, textarea')) return;
  if (event.key === 'ArrowRight') stepper.go(stepper.index + 1);
  else if (event.key === 'ArrowLeft') stepper.go(stepper.index - 1);
  else return;
  event.preventDefault();
});

try {
  engine = (await getJSON(`${API}/info`)).engine ?? null;
} catch {
  engine = null;  // the heavy stops say so in their computed line
}
stepper.load(STOPS.length, (i) => STOPS[i].title);
