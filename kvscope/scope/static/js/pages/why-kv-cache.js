// The why-cache-K-and-V lesson: one generation with the KV cache and the same one with
// every token's K and V recomputed at each step, timed token by token. Computing is in
// ../logic/why-kv-cache.js.
import '../chrome.js';
import {$, h, svg, replace} from '../dom.js';
import {labForm, num} from '../lab.js';
import {lineChart, q, readoutLines, tableRows} from '../logic/why-kv-cache.js';

function drawChart(data) {
  const c = lineChart(data);
  const t = data.totals;
  const summary = `Time per generated token against context length. With the KV cache: ${t.cached_ms} ms `
    + `in all; recomputing everything: ${t.recompute_ms} ms in all.`;
  const root = svg('svg', {viewBox: `0 0 ${c.width} ${c.height}`, role: 'img', 'aria-label': summary});
  for (const tick of c.yTicks) {
    root.append(svg('line', {x1: c.left, x2: c.width - c.right, y1: tick.at, y2: tick.at, class: 'rc-grid'}));
    root.append(svg('text', {x: c.left - 4, y: tick.at + 3, class: 'axis', 'text-anchor': 'end'}, String(tick.v)));
  }
  for (const tick of c.xTicks) {
    root.append(svg('text', {x: tick.at, y: c.height - c.bottom + 14, class: 'axis', 'text-anchor': 'middle'},
      String(tick.v)));
  }
  root.append(svg('text', {x: c.left, y: c.height - 4, class: 'axis'}, 'context length (tokens)'));
  root.append(svg('text', {x: 2, y: 9, class: 'axis'}, 'ms per token'));
  for (const s of c.series) {
    root.append(svg('polyline', {points: s.line, class: `rc-line rc-${s.key}`}));
    for (const p of s.points) {
      const dot = svg('circle', {cx: p.x, cy: p.y, r: 2.5, class: `rc-dot rc-${s.key}`});
      dot.append(svg('title', {}, `${s.name}: token ${p.index}, context ${p.context_len}, ${p.time_ms} ms`));
      root.append(dot);
    }
  }
  replace($('#chart'), root, h('p', {class: 'note'}, summary));
}

function drawTotals(data) {
  const t = data.totals;
  const stat = (term, value, id) => h('div', {}, h('dt', {}, term), h('dd', {id}, value));
  replace($('#totals'),
    stat('with the KV cache', `${t.cached_ms} ms`, 'cached-ms'),
    stat('recomputing', `${t.recompute_ms} ms`, 'recompute-ms'),
    stat('tokens computed, cached', String(t.cached_tokens_computed)),
    stat('tokens computed, recomputing', String(t.recompute_tokens_computed)),
    stat('same tokens', data.identical ? 'yes' : 'no', 'identical'));
  $('#text').textContent = q(data.text);
}

function drawTable(data) {
  const th = (text) => h('th', {scope: 'col'}, text);
  replace($('#per-token'), h('table', {class: 'data'},
    h('caption', {}, 'Each generated token: the context it was computed at, and the time and tokens each run spent on it'),
    h('thead', {}, h('tr', {}, th('Token'), th('Context'), th('Cached ms'), th('Computed'),
      th('Recompute ms'), th('Computed'), th('Same token'))),
    h('tbody', {}, tableRows(data).map((r) => h('tr', {},
      h('td', {}, String(r.index)), h('td', {}, String(r.context)),
      h('td', {}, String(r.cachedMs)), h('td', {}, String(r.cachedComputed)),
      h('td', {}, r.recomputeMs === null ? '–' : String(r.recomputeMs)),
      h('td', {}, r.recomputeComputed === null ? '–' : String(r.recomputeComputed)),
      h('td', {}, r.same ? 'yes' : 'no'))))));
}

function draw(data) {
  drawChart(data);
  drawTotals(data);
  drawTable(data);
  $('#readout').textContent = readoutLines(data).join('\n');
}

$('#readout').textContent = 'No result yet.';
const go = labForm($('#lab'), () => ({prompt: $('#prompt').value, max_tokens: num('#max-tokens')}), draw,
  {path: 'inside/recompute', label: 'The two runs'});
go();
