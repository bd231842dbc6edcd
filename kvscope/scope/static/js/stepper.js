// A stepper: Previous / Next buttons and a slider over a fixed list of steps, for
// pages that walk through a computation rather than a run's events (those use
// player.js). It is built inside one placeholder element:
//
//   <div data-stepper="phase" data-label="Attention steps" data-step-label="Attention step"
//        data-empty="Compute attention to begin."></div>
//
// data-stepper names the slider's id (the line under it gets `${id}-text`), data-label
// the whole group, data-step-label the slider, data-empty the line shown before load().

import {h} from './dom.js';

export class Stepper {
  // onMove(index) is called after every move, and after load().
  constructor(el, onMove) {
    const id = el.dataset.stepper;
    this.onMove = onMove;
    this.count = 0;
    this.nameOf = String;
    this.index = 0;
    const button = (text, delta, icon, iconAfter) => h('button', {
      type: 'button', id: `${id}-${delta < 0 ? 'prev' : 'next'}`, disabled: true,
      onclick: () => this.go(this.index + delta),
    }, iconAfter ? null : h('span', {'aria-hidden': 'true'}, `${icon} `), text,
    iconAfter ? h('span', {'aria-hidden': 'true'}, ` ${icon}`) : null);
    this.prev = button('Previous', -1, '◀', false);
    this.next = button('Next', 1, '▶', true);
    this.slider = h('input', {type: 'range', id, min: 0, max: 0, value: 0, step: 1});
    this.slider.addEventListener('input', () => this.go(Number(this.slider.value)));
    this.where = h('p', {class: 'where', id: `${id}-text`, 'aria-live': 'polite'},
      el.dataset.empty ?? '');
    el.classList.add('player');
    el.setAttribute('role', 'group');
    el.setAttribute('aria-label', el.dataset.label ?? 'Steps');
    el.replaceChildren(
      h('div', {class: 'buttons'}, this.prev, this.next),
      h('label', {for: id, class: 'visually-hidden'}, el.dataset.stepLabel ?? 'Step'),
      this.slider,
      this.where);
  }

  // A new list of `count` steps; nameOf(i) says what step i is.
  load(count, nameOf, at = 0) {
    this.count = count;
    this.nameOf = nameOf;
    this.slider.max = String(Math.max(0, count - 1));
    this.go(at);
  }

  go(index) {
    if (this.count === 0) return;
    this.index = Math.max(0, Math.min(this.count - 1, index));
    const text = `step ${this.index + 1} of ${this.count}: ${this.nameOf(this.index)}`;
    this.slider.value = String(this.index);
    this.slider.setAttribute('aria-valuetext', text);
    this.where.textContent = text;
    this.prev.disabled = this.index === 0;
    this.next.disabled = this.index === this.count - 1;
    this.onMove(this.index);
  }
}
