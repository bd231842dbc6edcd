// The timeline player: buttons to move by engine step or by single event, play /
// pause at a chosen speed, and a slider over every event of the run. Works for any
// run (a lab run, a replayed recording, or a live stream that keeps growing).

import {h, throttled} from './dom.js';
import {describeEvent} from './describe.js';

let counter = 0;

export class Player {
  // onChange(state, timeline) is called (at most once a frame) after every move.
  constructor(container, timeline, onChange, {live = false, label = 'Run timeline'} = {}) {
    this.timeline = timeline;
    this.onChange = onChange;
    this.timer = null;
    const id = `player${counter++}`;
    this.render = throttled(() => this.draw());
    const button = (act, text, icon, after = false) => h('button', {
      type: 'button', 'data-act': act,
      onclick: () => this.act(act),
    }, after ? null : h('span', {'aria-hidden': 'true'}, `${icon} `), text,
    after ? h('span', {'aria-hidden': 'true'}, ` ${icon}`) : null);
    this.playButton = h('button', {type: 'button', 'data-act': 'play', 'aria-pressed': 'false',
                                   onclick: () => this.toggle()}, 'Play');
    this.speed = h('select', {id: `${id}-speed`},
      [1, 2, 4, 8, 16].map((n) => h('option', {value: n, selected: n === 4}, `${n} steps/s`)));
    this.slider = h('input', {type: 'range', id: `${id}-pos`, min: 0, max: 0, step: 1, value: 0,
                              class: 'position', 'aria-label': 'Position in the run, by event'});
    this.slider.addEventListener('input', () => {
      this.stopPlaying();
      this.setFollow(false);
      this.timeline.seek(Number(this.slider.value));
      this.render();
    });
    this.where = h('p', {class: 'where', 'aria-live': 'polite', id: `${id}-where`});
    this.follow = null;
    if (live) {
      this.follow = h('input', {type: 'checkbox', id: `${id}-follow`, checked: true});
      this.follow.addEventListener('change', () => {
        if (this.follow.checked) this.act('end');
      });
    }
    this.el = h('div', {class: 'player', role: 'group', 'aria-label': label},
      h('div', {class: 'buttons'},
        button('start', 'Start', '|◀'),
        button('prev-step', 'Previous step', '◀◀'),
        button('prev-event', 'Previous event', '◀'),
        this.playButton,
        button('next-event', 'Next event', '▶', true),
        button('next-step', 'Next step', '▶▶', true),
        button('end', 'End', '▶|', true),
        h('label', {class: 'speed', for: `${id}-speed`}, 'Speed', this.speed),
        live ? h('label', {class: 'speed', for: `${id}-follow`}, this.follow, 'Follow live') : null),
      h('label', {class: 'visually-hidden', for: `${id}-pos`}, 'Position in the run, by event'),
      this.slider,
      this.where);
    container.replaceChildren(this.el);
    this.draw();
  }

  setTimeline(timeline, pos = 0) {
    this.stopPlaying();
    this.timeline = timeline;
    timeline.seek(pos);
    this.render();
  }

  setFollow(on) {
    if (this.follow) this.follow.checked = on;
  }

  get following() {
    return this.follow?.checked ?? false;
  }

  // New events arrived (live): follow them if asked to, and redraw.
  grew() {
    if (this.following) this.timeline.seek(this.timeline.length);
    this.render();
  }

  seek(pos) {
    this.timeline.seek(pos);
    this.render();
  }

  act(what) {
    const t = this.timeline;
    if (what !== 'end') this.setFollow(false);
    if (what !== 'play') this.stopPlaying();
    const to = {
      'start': 0,
      'prev-step': t.prevStop(),
      'prev-event': t.pos - 1,
      'next-event': t.pos + 1,
      'next-step': t.nextStop(),
      'end': t.length,
    }[what];
    t.seek(to);
    this.render();
  }

  toggle() {
    if (this.timer !== null) {
      this.stopPlaying();
      return;
    }
    if (this.timeline.atEnd) this.timeline.seek(0);
    this.setFollow(false);
    this.playButton.textContent = 'Pause';
    this.playButton.setAttribute('aria-pressed', 'true');
    const tick = () => {
      if (this.timeline.atEnd) {
        this.stopPlaying();
        return;
      }
      this.timeline.seek(this.timeline.nextStop());
      this.render();
      this.timer = setTimeout(tick, 1000 / Number(this.speed.value));
    };
    this.timer = setTimeout(tick, 0);
  }

  stopPlaying() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.playButton.textContent = 'Play';
    this.playButton.setAttribute('aria-pressed', 'false');
  }

  draw() {
    const t = this.timeline;
    this.slider.max = String(t.length);
    this.slider.value = String(t.pos);
    const step = t.lastEvent ? t.state.step : 0;
    const text = `step ${step}, event ${t.pos} of ${t.length}`;
    this.slider.setAttribute('aria-valuetext', text);
    this.where.textContent = `${text}: ${describeEvent(t.lastEvent)}`;
    // announce moves the reader makes, not every event of a live stream or of playback
    this.where.setAttribute('aria-live', this.following || this.timer !== null ? 'off' : 'polite');
    this.onChange(t.state, t);
  }
}
