// Views drawn from the folded state: the physical KV pool as a grid, each request's
// block table, the swap space, requests by status, and the per-step chart. Each
// view keeps its elements and only updates them, so redrawing every frame is cheap.

import {h, replace, svg} from './dom.js';
import {int, plural} from './format.js';
import {blockKind, owners, requestsByStatus} from './state.js';

const PALETTE = 10;

// The colour of a request: by its order of arrival, so it is stable through a run.
export function colorOf(state, rid) {
  const i = state.order.indexOf(rid);
  return `var(--r${(i < 0 ? 0 : i) % PALETTE})`;
}

function sharedBackground(state, rids) {
  const colors = rids.slice(0, 4).map((rid) => colorOf(state, rid));
  const band = 5;
  const stops = colors.map((c, i) => `${c} ${i * band}px ${(i + 1) * band}px`);
  return `repeating-linear-gradient(45deg, ${stops.join(', ')})`;
}

export function listIds(ids) {
  if (ids.length <= 1) return ids.join('');
  return `${ids.slice(0, -1).join(', ')} and ${ids[ids.length - 1]}`;
}

// One cell per physical block, coloured by the request(s) holding it; cached
// (evictable) and free blocks look different, and `highlight` ids are outlined.
// `refcounts`: shared blocks carry a badge with their reference count.
export class PoolGrid {
  constructor(container, {label = 'KV pool', legend = true, refcounts = false} = {}) {
    this.label = label;
    this.refcounts = refcounts;
    this.list = h('ul', {class: 'pool', role: 'list'});
    this.caption = h('p', {class: 'note'});
    container.replaceChildren(
      legend ? poolLegend() : '', this.list, this.caption);
    this.cells = [];
  }

  update(state, {highlight = new Set()} = {}) {
    const n = state.blocks.length;
    if (this.cells.length !== n) {
      this.cells = Array.from({length: n}, (_, id) => h('li', {class: 'cell', 'data-block': id},
        h('span', {}, String(id)),
        this.refcounts ? h('span', {class: 'ref', 'aria-hidden': 'true', hidden: true}) : null));
      this.list.replaceChildren(...this.cells);
      this.list.classList.toggle('small', n > 256 && n <= 1024);
      this.list.classList.toggle('tiny', n > 1024);
      this.list.setAttribute('aria-label', `${this.label}: ${plural(n, 'physical block')}`);
    }
    const who = owners(state);
    const counts = {free: 0, cached: 0, used: 0, shared: 0};
    state.blocks.forEach((b, id) => {
      const cell = this.cells[id];
      const kind = blockKind(b);
      counts[kind] += 1;
      const rids = who[id];
      cell.className = `cell ${kind}${highlight.has(id) ? ' hl' : ''}`;
      cell.dataset.kind = kind;
      cell.dataset.owners = rids.join(' ');
      let text;
      if (kind === 'used') {
        cell.style.background = colorOf(state, rids[0]);
        text = `block ${id}: request ${rids[0]}, position ${state.tables[rids[0]].indexOf(id)} in its table`;
      } else if (kind === 'shared') {
        cell.style.background = sharedBackground(state, rids);
        text = `block ${id}: shared by requests ${listIds(rids)} (refcount ${b.ref})`;
      } else {
        cell.style.background = '';
        text = kind === 'cached'
          ? `block ${id}: cached prefix block, evictable (hash ${b.hash.slice(0, 8)})`
          : `block ${id}: free`;
      }
      if (b.ref > 0 && kind === 'used' && b.hash) text += ', cached';
      if (highlight.has(id)) text += ' (highlighted)';
      if (this.refcounts) {
        const badge = cell.querySelector('.ref');
        badge.hidden = b.ref < 2;
        badge.textContent = b.ref > 1 ? `×${b.ref}` : '';
      }
      cell.setAttribute('aria-label', text);
      cell.title = text;
    });
    this.caption.textContent = `${plural(n, 'block')}: ${counts.used} held by one request, `
      + `${counts.shared} shared, ${counts.cached} cached and evictable, ${counts.free} free.`;
  }
}

export function poolLegend({highlight = null} = {}) {
  return h('ul', {class: 'legend', 'aria-label': 'Legend'},
    h('li', {}, h('span', {class: 'swatch', style: {background: 'var(--r0)'}}), 'held by one request (its colour)'),
    h('li', {}, h('span', {class: 'swatch shared'}), 'shared (several block tables, thick border)'),
    h('li', {}, h('span', {class: 'swatch cached'}), 'cached, refcount 0: evictable (hatched)'),
    h('li', {}, h('span', {class: 'swatch'}), 'free'),
    highlight ? h('li', {}, h('span', {class: 'swatch hl'}), highlight) : null);
}

// The swap space: which slots hold which swapped-out request's blocks.
export class SwapGrid {
  constructor(container) {
    this.list = h('ul', {class: 'pool', role: 'list'});
    this.caption = h('p', {class: 'note'});
    container.replaceChildren(this.list, this.caption);
    this.cells = [];
  }

  update(state) {
    const n = state.engine?.num_swap_slots ?? 0;
    if (this.cells.length !== n) {
      this.cells = Array.from({length: n}, (_, i) => h('li', {class: 'cell', 'data-slot': i},
        h('span', {}, String(i))));
      this.list.replaceChildren(...this.cells);
      this.list.classList.toggle('small', n > 256);
      this.list.setAttribute('aria-label', `Swap space: ${plural(n, 'slot')}`);
    }
    const holder = new Map();
    for (const [rid, slots] of Object.entries(state.swapped)) {
      for (const slot of slots) holder.set(slot, rid);
    }
    this.cells.forEach((cell, slot) => {
      const rid = holder.get(slot);
      cell.className = `cell ${rid === undefined ? 'free' : 'used'}`;
      cell.style.background = rid === undefined ? '' : colorOf(state, rid);
      const text = rid === undefined ? `swap slot ${slot}: free`
        : `swap slot ${slot}: request ${rid}`;
      cell.setAttribute('aria-label', text);
      cell.title = text;
    });
    this.caption.textContent = n ? `${plural(holder.size, 'slot')} of ${n} in use.`
      : 'This engine has no swap space (recompute mode).';
  }
}

// Each request's block table: logical block i -> physical block id. `shared`: mark the
// entries whose block sits in several tables, with its refcount.
export function drawBlockTables(container, state, rids = state.order,
                                {highlight = new Set(), shared = false} = {}) {
  const rows = rids.map((rid) => {
    const req = state.requests[rid];
    const table = state.tables[rid];
    const swapped = state.swapped[rid];
    let cells;
    if (table?.length) {
      cells = h('ol', {'aria-label': `block table of request ${rid}`},
        table.map((id, i) => {
          const bs = state.engine?.block_size ?? 1;
          const filled = Math.max(0, Math.min(bs, (req?.numComputed ?? 0) - i * bs));
          const ref = state.blocks[id]?.ref ?? 0;
          const isShared = shared && ref > 1;
          const text = `logical block ${i} → physical block ${id}, ${filled} of ${bs} slots hold tokens`
            + (isShared ? `, shared (refcount ${ref})` : '');
          return h('li', {
            style: {background: colorOf(state, rid)},
            class: [highlight.has(id) ? 'hl' : '', isShared ? 'shared' : ''].join(' ').trim() || null,
            title: text,
            'aria-label': text,
          }, h('span', {}, String(id)));
        }));
    } else if (swapped?.length) {
      cells = h('span', {class: 'empty'}, `swapped out to slots ${swapped.join(', ')}`);
    } else {
      cells = h('span', {class: 'empty'}, 'no blocks');
    }
    return h('li', {},
      h('span', {class: 'who'}, h('span', {class: 'req-chip', style: {background: colorOf(state, rid)}}),
        ` request ${rid}`, req ? ` (${req.status})` : ''),
      cells);
  });
  replace(container, rows.length ? h('ul', {class: 'tables'}, rows)
    : h('p', {class: 'empty'}, 'No requests yet.'));
}

// Requests grouped by status, newest last; at most `limit` per column.
export function drawStatusColumns(container, state, {limit = 12} = {}) {
  const groups = requestsByStatus(state);
  const columns = ['waiting', 'running', 'preempted', 'swapped', 'finished'].map((status) => {
    const ids = status === 'finished' ? [...groups.finished, ...groups.aborted] : groups[status];
    const shown = ids.slice(-limit);
    return h('section', {'aria-label': `${status}: ${ids.length}`},
      h('h3', {}, `${status} (${ids.length})`),
      h('ul', {}, shown.map((rid) => {
        const req = state.requests[rid];
        return h('li', {title: rid},
          h('span', {class: 'req-chip', style: {background: colorOf(state, rid)}}),
          ` ${rid} · ${req.outputTokenIds.length} out`);
      }), ids.length > shown.length ? h('li', {class: 'note'}, `… ${ids.length - shown.length} more`) : null));
  });
  replace(container, h('div', {class: 'status-columns'}, columns));
}

// A bar chart of the latest steps: tokens run (top) and forward time (bottom).
export function drawStepChart(container, steps, {last = 60} = {}) {
  const shown = steps.slice(-last);
  const W = 600;
  const H = 160;
  const band = 52;  // height of each bar band
  const top1 = 14;  // tokens band: [top1, top1 + band]
  const top2 = top1 + band + 20;  // forward-time band
  const maxTokens = Math.max(1, ...shown.map((s) => s.num_tokens));
  const maxMs = Math.max(0.001, ...shown.map((s) => s.forward_ms));
  const bw = W / Math.max(last, 1);
  const latest = shown[shown.length - 1];
  const summary = latest
    ? `Last ${shown.length} steps. Latest, step ${latest.step}: ${latest.num_tokens} tokens, `
      + `forward ${latest.forward_ms.toFixed(1)} ms. Most tokens in a step: ${maxTokens}; `
      + `slowest forward: ${maxMs.toFixed(1)} ms.`
    : 'No steps yet.';
  const chart = svg('svg', {viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': summary});
  shown.forEach((s, i) => {
    const x = i * bw;
    const th = (s.num_tokens / maxTokens) * band;
    const fh = (s.forward_ms / maxMs) * band;
    const now = i === shown.length - 1 ? ' now' : '';
    chart.append(svg('rect', {x: x + 1, y: top1 + band - th, width: Math.max(1, bw - 2), height: th,
                           class: `tokens${now}`}));
    chart.append(svg('rect', {x: x + 1, y: top2 + band - fh, width: Math.max(1, bw - 2), height: fh,
                           class: `forward${now}`}));
  });
  chart.append(svg('text', {x: 2, y: top1 - 3, class: 'axis'}, `tokens per step (max ${maxTokens})`));
  chart.append(svg('text', {x: 2, y: top2 - 3, class: 'axis'}, `forward ms (max ${maxMs.toFixed(1)})`));
  chart.append(svg('text', {x: 2, y: H - 2, class: 'axis'},
    shown.length ? `steps ${shown[0].step}–${latest.step}` : ''));
  replace(container, chart, h('p', {class: 'note'}, summary));
}

export {plural, int};
