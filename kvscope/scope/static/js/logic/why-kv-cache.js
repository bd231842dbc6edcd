// The why-cache-K-and-V lesson's logic, free of the DOM: the two runs' per-token
// times as chart coordinates (time against context length), and the readout. Every
// number printed is one the server measured.

export const q = (text) => JSON.stringify(text);

// SVG coordinates to 1/100 of a unit
export const r2 = (x) => Math.round(x * 100) / 100;

export const SERIES = [
  {key: 'cached', name: 'with the KV cache'},
  {key: 'recompute', name: 'recomputing everything'},
];

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  const m = v / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

export function ticks(max, count = 5) {
  const step = max / count;
  return Array.from({length: count + 1}, (_, i) => Number((i * step).toPrecision(6)));
}

// Coordinates of both lines: x = context length, y = time per token (both linear,
// from 0). xMax and yMax are rounded up to 1, 2 or 5 times a power of ten.
export function lineChart(data, {width = 600, height = 260, left = 48, right = 12, top = 22,
                                 bottom = 36} = {}) {
  const all = [...data.cached, ...data.recompute];
  const xMax = niceMax(Math.max(...all.map((p) => p.context_len)));
  const yMax = niceMax(Math.max(...all.map((p) => p.time_ms)));
  const x = (c) => r2(left + ((width - left - right) * c) / xMax);
  const y = (t) => r2(top + ((height - top - bottom) * (yMax - t)) / yMax);
  const series = SERIES.map(({key, name}) => {
    const points = data[key].map((p) => ({...p, x: x(p.context_len), y: y(p.time_ms)}));
    return {key, name, points, line: points.map((p) => `${p.x},${p.y}`).join(' ')};
  });
  return {
    width, height, left, right, top, bottom, xMax, yMax, series,
    xTicks: ticks(xMax).map((v) => ({v, at: x(v)})),
    yTicks: ticks(yMax).map((v) => ({v, at: y(v)})),
  };
}

function runLine(name, points, totalMs, computed) {
  const first = points[0];
  const last = points[points.length - 1];
  return [
    `${name}: ${totalMs} ms in all, ${computed} tokens computed`,
    `  first token: ${first.time_ms} ms at context ${first.context_len} (${first.tokens_computed} computed); `
      + `last token: ${last.time_ms} ms at context ${last.context_len} (${last.tokens_computed} computed)`,
  ];
}

export function readoutLines(data) {
  const t = data.totals;
  return [
    `prompt: ${data.prompt_tokens} tokens; generated ${data.cached.length} tokens: ${q(data.text)}`,
    ...runLine('with the KV cache', data.cached, t.cached_ms, t.cached_tokens_computed),
    ...runLine('recomputing everything', data.recompute, t.recompute_ms, t.recompute_tokens_computed),
    `identical tokens: ${data.identical ? 'yes' : 'no'}`,
  ];
}

export function tableRows(data) {
  return data.cached.map((c, i) => {
    const r = data.recompute[i];
    return {index: c.index, context: c.context_len, cachedMs: c.time_ms, cachedComputed: c.tokens_computed,
            recomputeMs: r?.time_ms ?? null, recomputeComputed: r?.tokens_computed ?? null,
            same: r ? r.token_id === c.token_id : false};
  });
}
