// The sampling lesson's logic, free of the DOM: what the sliders say, the candidate
// bars (before and after the filters), the readout. Every number shown is one the
// server sent (the engine's own sampler computed it); nothing here recomputes a
// probability.

export const DEFAULTS = {temperature: 1, top_k: 0, top_p: 1, min_p: 0, seed: 0, show: 20};

export const q = (text) => JSON.stringify(text);

// What a control's value means, for its <output> and aria-valuetext.
export function controlText(name, value) {
  const v = Number(value);
  switch (name) {
    case 'temperature': return v === 0 ? '0 (greedy)' : String(v);
    case 'top_k': return v === 0 ? '0 (off)' : String(v);
    case 'top_p': return v === 1 ? '1 (off)' : String(v);
    case 'min_p': return v === 0 ? '0 (off)' : String(v);
    default: return String(v);
  }
}

// The request body from the controls' raw values (strings from the inputs).
export function requestBody(prompt, values) {
  const body = {prompt};
  for (const key of ['temperature', 'top_k', 'top_p', 'min_p', 'seed', 'show']) {
    const text = String(values[key] ?? '').trim();
    body[key] = text === '' ? DEFAULTS[key] : Number(text);
  }
  return body;
}

// A probability as a percentage for the bars: one decimal, or two significant digits
// when smaller than 0.1% (so a small probability never reads as 0).
export function probText(p) {
  if (p === 0) return '0%';
  const x = 100 * p;
  return x >= 0.1 ? `${x.toFixed(1)}%` : `${x.toPrecision(2)}%`;
}

// One row per shown candidate: bar widths (percent of the largest probability shown,
// before or after the filters) and the texts the page prints.
export function candidateRows(data) {
  const top = Math.max(1e-30, ...data.candidates.flatMap((c) => [c.prob_scaled, c.prob_final]));
  return data.candidates.map((c) => ({
    rank: c.rank,
    id: c.id,
    token: q(c.text),
    survives: c.survives,
    before: c.prob_scaled,
    after: c.prob_final,
    beforeWidth: (100 * c.prob_scaled) / top,
    afterWidth: (100 * c.prob_final) / top,
    // at temperature 0 (greedy) the server's prob_scaled is the plain softmax
    label: `rank ${c.rank}, token ${q(c.text)} (id ${c.id}): logit ${c.logit}, `
      + `p at temperature 1 ${c.prob}, `
      + (data.params.temperature === 0 ? '' : `after temperature ${c.prob_scaled}, `)
      + (c.survives ? `kept, drawn with p ${c.prob_final}` : 'filtered out'),
  }));
}

export function paramsLine(params) {
  const t = params.temperature === 0 ? '0 (greedy)' : String(params.temperature);
  const k = params.top_k === 0 ? '0 (off)' : String(params.top_k);
  const p = params.top_p === 1 ? '1 (off)' : String(params.top_p);
  const m = params.min_p === 0 ? '0 (off)' : String(params.min_p);
  return `temperature ${t}, top-k ${k}, top-p ${p}, min-p ${m}, seed ${params.seed}`;
}

export function readoutLines(data) {
  const n = data.tokens.length;
  const shown = data.candidates.length;
  const kept = data.candidates.filter((c) => c.survives);
  const cut = shown - kept.length;
  const lines = [
    `prompt: ${n} tokens, the next token after ${q(data.tokens[n - 1])}`,
    paramsLine(data.params),
    `survivors: ${data.num_survivors} of ${data.vocab_size} tokens`,
    `kept among the ${shown} most likely: `
      + (kept.length ? kept.map((c) => `${q(c.text)} ${c.prob_final}`).join(', ') : 'none'),
    `filtered among the ${shown} most likely: ${cut}`,
    `drawn with seed ${data.params.seed}: ${q(data.drawn.text)} (id ${data.drawn.id}), `
      + `p ${data.drawn.prob_final}`,
    `greedy: ${q(data.greedy.text)} (id ${data.greedy.id})`,
  ];
  return lines;
}

// fn(...args) once, `ms` after the last call (a slider dragged sends one request).
export function debounce(fn, ms = 200, timers = globalThis) {
  let timer = null;
  const wrapped = (...args) => {
    if (timer !== null) timers.clearTimeout(timer);
    timer = timers.setTimeout(() => {
      timer = null;
      fn(...args);
    }, ms);
  };
  wrapped.cancel = () => {
    if (timer !== null) timers.clearTimeout(timer);
    timer = null;
  };
  return wrapped;
}

// At most one request in flight: a call while one runs asks again once it is done,
// with the latest arguments only (the server runs one lesson job at a time).
export function latestOnly(run) {
  let running = false;
  let next = null;
  const go = async (...args) => {
    if (running) {
      next = args;
      return;
    }
    running = true;
    try {
      await run(...args);
    } finally {
      running = false;
      if (next) {
        const again = next;
        next = null;
        go(...again);
      }
    }
  };
  return go;
}
