import '../chrome.js';
import {$, h, replace, svg, int, bytes, pct} from '../dom.js';
import {API, getJSON, showError} from '../api.js';
import {prompts, num, workerLabForm} from '../lab.js';
import {WATCHED, f4, ms, shape, counted, tensorRun, weightShares, reduction, kvPoolSize, timingLine,
  readoutText, weightLayout} from '../logic/tensor-parallelism.js';

const form = $('#lab');
const layerInput = $('#layer');
const errorEl = $('#error');
const rankClass = (r) => `tp-r${r % 2}`;

// -- 1. the weight map ---------------------------------------------------------------------

function drawWeights(run) {
  const names = Object.keys(run.ranks[0].weights);
  const items = names.map((name) => {
    const {info, local, full, along, drawn} = weightLayout(run, name);
    const bar = h('div', {class: 'tp-bar', role: 'img',
                          'aria-label': `${name}, ${full[info.axis]} ${along}: `
                            + drawn.map((p) => `${p.label} (${p.size}) on rank ${p.rank}`).join(', ')},
      drawn.map((p) => h('span', {class: `seg ${rankClass(p.rank)}`, title: `${p.label}: ${p.size} ${along}, rank ${p.rank}`,
                                  style: {width: `${(100 * p.size) / full[info.axis]}%`}}, p.label)));
    return h('li', {class: 'tp-weight'},
      h('div', {class: 'tp-weight-head'},
        h('span', {class: 'name'}, name),
        h('span', {class: 'tag'}, info.kind),
        h('span', {class: 'note'}, `full ${shape(full)}, ${info.what}; split along the ${full[info.axis]} ${along}`)),
      bar,
      h('p', {class: 'tp-shapes'}, run.ranks.map((r, i) => h('span', {class: `tp-shape ${rankClass(r.rank)}`},
        `rank ${r.rank}: ${shape(local[i])}`))));
  });
  replace($('#weights'),
    h('ul', {class: 'tp-weights'}, items),
    h('p', {class: 'note'}, `One layer's four projections: ${weightShares(run).map((w) => `rank ${w.rank} holds `
      + `${int(w.count)} weights (${pct(w.share)})`).join(', ')}. The norms are copied to every rank. `
      + `Worker processes: ${run.ranks.map((r) => `rank ${r.rank} pid ${r.pid}, shard loaded in ${r.load_s.toFixed(2)} s`).join('; ')}.`));
}

// -- 2. the watched layer: partials, their sum, the all-reduce ----------------------------

// Each dimension as vector addition on a number line: rank 0's partial from zero, the
// next rank's from where the previous ended; a tick where the all-reduced value is.
function additionChart(red) {
  const row = 20;
  const left = 30;
  const W = 340;
  const H = row * red.dims + 18;
  const reach = Math.max(1e-9, ...red.sum.map(Math.abs),
    ...red.recs.flatMap((_, r) => red.sum.map((_, d) => Math.abs(red.recs.slice(0, r + 1)
      .reduce((s, rec) => s + rec.partial[d], 0)))));
  const zero = left + (W - left) / 2;
  const scale = (W - left - 8) / 2 / reach;
  const chart = svg('svg', {viewBox: `0 0 ${W} ${H}`, class: 'tp-add'});
  chart.append(svg('line', {x1: zero, x2: zero, y1: 0, y2: row * red.dims, class: 'zero'}));
  for (let d = 0; d < red.dims; d++) {
    const y = d * row + 3;
    chart.append(svg('text', {x: 2, y: y + 11, class: 'axis'}, `d${d}`));
    let at = 0;
    red.recs.forEach((rec, r) => {
      const next = at + rec.partial[d];
      const x1 = zero + Math.min(at, next) * scale;
      const w = Math.max(1, Math.abs(rec.partial[d]) * scale);
      chart.append(svg('rect', {x: x1, y: y + r * 6, width: w, height: 6, class: rankClass(r)}));
      at = next;
    });
    const xr = zero + red.recs[0].reduced[d] * scale;
    chart.append(svg('line', {x1: xr, x2: xr, y1: y - 2, y2: y + 6 * red.recs.length + 2, class: 'sum-tick'}));
  }
  chart.append(svg('text', {x: zero, y: H - 3, class: 'axis', 'text-anchor': 'middle'}, '0'));
  chart.setAttribute('role', 'img');
  chart.setAttribute('aria-label', `The ${red.dims} dims as sums: each rank's partial, laid end to end, `
    + 'reaches the all-reduced value (the tick).');
  return chart;
}

function drawReduce(run) {
  const w = run.watched;
  if (!w) {
    $('#reduce-line').textContent = 'This run kept no partial sums.';
    replace($('#reduce'));
    return;
  }
  $('#reduce-line').textContent = `Layer ${w.layer} at step ${w.step}, the run's last step, for the last token `
    + 'row of its batch. Each rank multiplies its slice of the input by its columns of the weight; the '
    + 'all-reduce adds the partial vectors, and every rank gets the same sum.';
  const blocks = WATCHED.map(({key, title, input}) => {
    const red = reduction(run, key);
    const flow = h('ol', {class: 'tp-flow', 'aria-label': `${key}: from each rank's input slice to the all-reduce`},
      red.recs.map((rec, r) => {
        const rank = run.ranks[r];
        const from = key === 'o_proj' ? counted('query head', rank.q_heads) : counted('neuron', rank.intermediate);
        return h('li', {class: `tp-rank ${rankClass(r)}`},
          h('span', {class: 'who'}, `rank ${r}`),
          h('span', {}, `input slice: ${rec.input_columns} columns of the ${input} (${from}), starting `),
          h('span', {class: 'vector'}, rec.input_head.map(f4).join(', ')),
          h('span', {}, ` × its ${shape(rank.weights[key])} ${key} → partial sum, starting `),
          h('span', {class: 'vector'}, rec.partial.slice(0, 3).map(f4).join(', '), ', …'));
      }),
      h('li', {class: 'tp-op'}, h('span', {class: 'who'}, 'all-reduce'),
        `adds the ${red.recs.length} partial vectors; every rank receives `,
        h('span', {class: 'vector'}, red.recs[0].reduced.slice(0, 3).map(f4).join(', '), ', …')));
    const rows = [];
    for (let d = 0; d < red.dims; d++) {
      rows.push(h('tr', {},
        h('td', {}, String(d)),
        red.recs.map((rec) => h('td', {}, f4(rec.partial[d]))),
        h('td', {}, f4(red.sum[d])),
        red.recs.map((rec) => h('td', {}, f4(rec.reduced[d]))),
        h('td', {}, red.same[d] ? '✓ equal' : '✕ differs')));
    }
    const caption = `${key}: the first ${red.dims} of its ${run.ranks[0].weights[key][0]} output dims`;
    const id = `${key}-caption`;
    return h('section', {class: 'tp-reduce', 'aria-label': title},
      h('h3', {}, title),
      flow,
      h('div', {class: 'tp-reduce-body'},
        h('div', {class: 'table-wrap', tabindex: 0, role: 'region', 'aria-labelledby': id},
          h('table', {class: 'data', id: `${key}-table`},
            h('caption', {id}, caption),
            h('thead', {}, h('tr', {},
              h('th', {scope: 'col'}, 'dim'),
              red.recs.map((_, r) => h('th', {scope: 'col'}, `rank ${r} partial`)),
              h('th', {scope: 'col'}, 'sum'),
              red.recs.map((_, r) => h('th', {scope: 'col'}, `all-reduced, rank ${r}`)),
              h('th', {scope: 'col'}, 'check'))),
            h('tbody', {}, rows))),
        h('figure', {class: 'tp-figure'}, additionChart(red),
          h('figcaption', {class: 'note'}, 'Each dim: rank 0\'s partial (blue) from zero, rank 1\'s (orange) '
            + 'from where it ends; the tick is the all-reduced value.'))));
  });
  replace($('#reduce'), blocks);
}

// -- 3. KV heads and blocks by rank ---------------------------------------------------------

function drawKv(run) {
  const pools = run.ranks.map((r) => {
    const size = kvPoolSize(run, r);
    return h('li', {class: `tp-pool ${rankClass(r.rank)}`},
      h('span', {class: 'who'}, `rank ${r.rank}`),
      ` pool [${r.kv_pool_shape.join(', ')}]: layers × K,V × blocks × slots × KV heads × dims = `,
      `${int(size.elements)} values, ${bytes(size.bytes)}; holds ${counted('KV head', r.kv_heads)}`);
  });
  const requests = run.order.map((rid) => {
    const ids = run.blocks.get(rid);
    return h('li', {class: 'tp-request'},
      h('span', {class: 'who'}, `request ${rid}: blocks ${ids.join(', ') || 'none'}`),
      run.ranks.map((r) => {
        const heads = [];
        for (let k = r.kv_heads[0]; k < r.kv_heads[1]; k++) heads.push(k);
        return h('div', {class: `tp-kv-row ${rankClass(r.rank)}`},
          h('span', {class: 'rank-name'}, `rank ${r.rank}`),
          h('ol', {class: 'tp-kv-blocks', 'aria-label': `request ${rid} on rank ${r.rank}`},
            ids.map((b) => h('li', {class: `tp-kv-block ${rankClass(r.rank)}`,
                                    'aria-label': `block ${b} on rank ${r.rank}: ${counted('KV head', r.kv_heads)}`},
              h('span', {class: 'id'}, `${b}`),
              heads.map((k) => h('span', {class: 'head'}, `h${k}`))))));
      }));
  });
  replace($('#kv'),
    h('p', {class: 'note'}, 'The driver\'s one block manager gave each request these block ids. Every rank '
      + 'has every block, holding the keys and values of its own KV heads only.'),
    h('ul', {class: 'tp-pools'}, pools),
    h('ul', {class: 'tp-requests'}, requests));
}

// -- 4. timing ------------------------------------------------------------------------------

function drawTiming(run) {
  const most = Math.max(1e-9, ...run.steps.map((s) => s.forward_ms));
  const steps = run.steps.map((s) => h('li', {},
    h('span', {class: 'bar-label'}, `step ${s.step}: ${s.num_collectives} collectives, `
      + `${ms(s.collective_ms)} of ${ms(s.forward_ms)} forward`),
    h('div', {class: 'track', role: 'img',
              'aria-label': `step ${s.step}: ${ms(s.collective_ms)} in collectives of ${ms(s.forward_ms)} forward`},
      h('span', {class: 'fill tp-fwd', style: {width: `${(100 * s.forward_ms) / most}%`}}),
      h('span', {class: 'fill tp-coll', style: {width: `${(100 * s.collective_ms) / most}%`}}))));
  const parts = [
    h('ul', {class: 'legend', 'aria-label': 'Legend'},
      h('li', {}, h('span', {class: 'swatch tp-coll'}), 'in collectives (rank 0)'),
      h('li', {}, h('span', {class: 'swatch tp-fwd'}), 'rest of the forward pass')),
    h('ul', {class: 'bars'}, steps),
    h('p', {class: 'note'}, timingLine(run) + '.'),
  ];
  const w = run.watched;
  if (w) {
    const rows = [];
    let longest = 1e-9;
    for (const {key} of WATCHED) {
      for (const rec of w.ranks.map((r) => r[key])) longest = Math.max(longest, rec.matmul_ms, rec.all_reduce_ms);
    }
    for (const {key} of WATCHED) {
      w.ranks.forEach((r, i) => {
        const rec = r[key];
        rows.push(h('li', {},
          h('span', {class: 'bar-label'}, `${key}, rank ${i}: matmul ${ms(rec.matmul_ms, 3)}, all-reduce `
            + `${ms(rec.all_reduce_ms, 3)}`),
          h('div', {class: 'tp-pair', 'aria-hidden': 'true'},
            h('div', {class: 'track'}, h('span', {class: 'fill tp-mm', style: {width: `${(100 * rec.matmul_ms) / longest}%`}})),
            h('div', {class: 'track'}, h('span', {class: 'fill tp-coll', style: {width: `${(100 * rec.all_reduce_ms) / longest}%`}})))));
      });
    }
    parts.push(h('h3', {}, `Layer ${w.layer} at step ${w.step}: one matmul against one all-reduce`),
      h('ul', {class: 'legend', 'aria-label': 'Legend'},
        h('li', {}, h('span', {class: 'swatch tp-mm'}), 'matmul'),
        h('li', {}, h('span', {class: 'swatch tp-coll'}), 'all-reduce')),
      h('ul', {class: 'bars'}, rows),
      h('p', {class: 'note'}, 'Measured on this server: two CPU processes, gloo over local sockets. An '
        + 'all-reduce\'s time includes waiting for the other rank to arrive. With NVLink between GPUs a small '
        + 'all-reduce would take on the order of ten microseconds: an estimate, not measured here.'));
  }
  replace($('#timing'), parts);
}

function drawOutputs(run) {
  replace($('#outputs'), run.outputs.map((o) => h('li', {},
    h('span', {class: 'meta'}, `request ${o.request_id}, ${o.token_ids.length} tokens: `),
    h('span', {class: 'text'}, o.text))));
}

function show(data) {
  const run = tensorRun(data);
  drawWeights(run);
  drawReduce(run);
  drawKv(run);
  drawTiming(run);
  drawOutputs(run);
  $('#readout').textContent = readoutText(run);
}

// -- the form ---------------------------------------------------------------------------

const requestBody = () => ({
  prompts: prompts($('#prompts')),
  max_tokens: num('#max-tokens'),
  block_size: 4,
  num_blocks: 32,
  enable_prefix_caching: false,
  tensor_parallel_size: 2,
  watch_layer: num('#layer'),
});

workerLabForm(form, [$('#prompts'), layerInput, $('#max-tokens')], requestBody, (data) => show(data), {
  label: 'The tensor-parallel run',
  waiting: (s) => 'Running on 2 ranks: starting the worker processes, loading their shards, '
    + `stepping the engine… ${s} s`,
});

// the layer selector spans the served model's layers
try {
  const info = await getJSON(`${API}/info`);
  const layers = info.engine?.num_layers;
  if (layers) {
    layerInput.max = String(layers - 1);
    $('#last-layer').textContent = String(layers - 1);
  }
} catch (err) {
  showError(errorEl, 'Asking the server for its model', err);
}
