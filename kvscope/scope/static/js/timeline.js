// A position in a run's events, and the state folded up to it. No DOM here.
//
// `pos` counts the events applied (0 = none, events.length = all). Moving forward
// applies events to the current state; moving back restores the nearest saved
// checkpoint and applies forward from it, so scrubbing a long run stays cheap.
// "Stops" are the positions right after each step_end: the engine between steps.

import {emptyState, applyEvent} from './state.js';

export class Timeline {
  constructor(events = [], {checkpointEvery = 1000, maxEvents = 200000, keepSteps = 0,
                            keepFinished = 0} = {}) {
    this.events = [];
    this.stops = [];
    this.pos = 0;
    this.checkpointEvery = checkpointEvery;
    this.maxEvents = maxEvents;  // live streams drop their oldest events past this
    this.keepSteps = keepSteps;  // >0: keep only the latest step records (live monitor)
    this.keepFinished = keepFinished;  // >0: forget all but the latest finished requests
    this.forgetAt = 2 * keepFinished;
    this.base = emptyState();    // the state before events[0]
    this.checkpoints = new Map([[0, structuredClone(this.base)]]);
    this.state = structuredClone(this.base);
    this.push(events);
  }

  get length() { return this.events.length; }
  get atEnd() { return this.pos === this.events.length; }
  get lastEvent() { return this.pos > 0 ? this.events[this.pos - 1] : null; }

  push(events) {
    for (const event of events) {
      this.events.push(event);
      if (event.kind === 'step_end') this.stops.push(this.events.length);
    }
    if (this.events.length > this.maxEvents && this.pos > this.maxEvents / 2) {
      this.dropOldest(Math.floor(this.maxEvents / 2));
    }
  }

  // Forget the first n events: the state after them becomes the base.
  dropOldest(n) {
    const keep = this.pos;
    this.seek(n);
    this.base = structuredClone(this.state);
    this.events = this.events.slice(n);
    this.stops = this.stops.filter((s) => s > n).map((s) => s - n);
    this.pos = 0;
    this.checkpoints = new Map([[0, structuredClone(this.base)]]);
    this.seek(keep - n);
  }

  seek(target) {
    const to = Math.max(0, Math.min(this.events.length, Math.round(target)));
    if (to < this.pos) {
      let from = 0;
      for (const at of this.checkpoints.keys()) if (at <= to && at > from) from = at;
      this.state = structuredClone(this.checkpoints.get(from));
      this.pos = from;
    }
    while (this.pos < to) {
      applyEvent(this.state, this.events[this.pos]);
      this.pos += 1;
      if (this.keepSteps && this.state.steps.length > 2 * this.keepSteps) {
        this.state.steps.splice(0, this.state.steps.length - this.keepSteps);
      }
      if (this.keepFinished && this.state.order.length > this.forgetAt) this.forgetFinished();
      if (this.pos % this.checkpointEvery === 0 && !this.checkpoints.has(this.pos)) {
        this.checkpoints.set(this.pos, structuredClone(this.state));
      }
    }
    return this.state;
  }

  // A long-lived monitor would otherwise keep every request it ever saw. Finished and
  // aborted requests get no more events, so dropping the oldest loses nothing live.
  forgetFinished() {
    const {order, requests} = this.state;
    const done = order.filter((id) => ['finished', 'aborted'].includes(requests[id].status));
    const drop = new Set(done.slice(0, Math.max(0, done.length - this.keepFinished)));
    this.forgetAt = order.length - drop.size + this.keepFinished;
    if (!drop.size) return;
    for (const id of drop) delete requests[id];
    this.state.order = order.filter((id) => !drop.has(id));
  }

  nextStop() {
    const stop = this.stops.find((s) => s > this.pos);
    return stop ?? this.events.length;
  }

  prevStop() {
    let best = 0;
    for (const s of this.stops) if (s < this.pos) best = s;
    return best;
  }

  // The position right after step `n` ended (or the end, if it never did).
  stopOfStep(n) {
    for (const s of this.stops) if (this.events[s - 1].step === n) return s;
    return this.events.length;
  }
}
