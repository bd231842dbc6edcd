// A heatmap the keyboard can walk: rows of coloured .hm-cell spans in a role="grid"
// element, each cell's row and column in two data attributes (data-q / data-k, say).
// One cell at a time is in the tab order (a roving tabindex); the arrow keys move it,
// and hovering, focusing or moving to a cell writes what it holds into a detail line.

import {h, replace} from './dom.js';

export class HeatGrid {
  // rowAttr / colAttr: the data attributes' names after `data-`; move(focus, key): the
  // {row, col} a key moves to from `focus`, or null; text(row, col): a cell's line.
  constructor(el, detail, {rowAttr, colAttr, move, text}) {
    this.el = el;
    this.detail = detail;
    this.rowAttr = rowAttr;
    this.colAttr = colAttr;
    this.text = text;
    this.focus = {row: 0, col: 0};
    this.drawn = false;
    const cellAt = (event) => {
      const cell = event.target.closest?.('.hm-cell');
      return cell && {row: Number(cell.dataset[rowAttr]), col: Number(cell.dataset[colAttr])};
    };
    el.addEventListener('mouseover', (event) => {
      const cell = cellAt(event);
      if (cell) detail.textContent = text(cell.row, cell.col);
    });
    el.addEventListener('focusin', (event) => {
      const cell = cellAt(event);
      if (cell) this.select(cell, false);
    });
    el.addEventListener('keydown', (event) => {
      if (!this.drawn) return;
      const next = move(this.focus, event.key);
      if (!next) return;
      event.preventDefault();
      this.select(next, true);
    });
  }

  // rows: [{label, title, colors}], a row header and one cell per colour; `empty` is the
  // detail line until a cell is chosen.
  draw(rows, empty) {
    this.focus = {row: 0, col: 0};
    this.drawn = true;
    replace(this.el, rows.map(({label, title, colors}, r) => h('div', {role: 'row', class: 'hm-row'},
      h('span', {role: 'rowheader', class: 'hm-label', title}, label),
      colors.map((background, c) => h('span', {
        role: 'gridcell', class: 'hm-cell', tabindex: r === 0 && c === 0 ? '0' : '-1',
        [`data-${this.rowAttr}`]: String(r), [`data-${this.colAttr}`]: String(c),
        'aria-label': this.text(r, c), style: {background},
      })))));
    this.detail.textContent = empty;
  }

  cellEl({row, col}) {
    return this.el.querySelector(`[data-${this.rowAttr}="${row}"][data-${this.colAttr}="${col}"]`);
  }

  select(cell, moveFocus) {
    const old = this.cellEl(this.focus);
    if (old) old.tabIndex = -1;
    this.focus = cell;
    const el = this.cellEl(cell);
    el.tabIndex = 0;
    if (moveFocus) el.focus();
    this.detail.textContent = this.text(cell.row, cell.col);
  }
}
