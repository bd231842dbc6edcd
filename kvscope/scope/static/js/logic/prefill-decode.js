// The prefill-vs-decode lesson's logic, free of the DOM: steps grouped by phase, the
// step bar chart, the log-log roofline coordinates, and the readout. Every number
// printed is one the server measured (or, for the GPU, computed from its published
// spec, and labelled so); positions on the GPU roofline are projections.

export const PHASES = ['prefill', 'decode'];

// SVG coordinates to 1/100 of a unit
export const r2 = (x) => Math.round(x * 100) / 100;

export function phaseGroups(steps) {
  return {
    prefill: steps.filter((s) => s.phase === 'prefill'),
    decode: steps.filter((s) => s.phase === 'decode'),
  };
}

// Bars for the step chart: time (top band, coloured by phase) and tokens (bottom band).
export function stepBars(steps, {width = 600, band = 70, top = 16, gap = 26} = {}) {
  const maxMs = Math.max(1e-30, ...steps.map((s) => s.time_ms));
  const maxTokens = Math.max(1, ...steps.map((s) => s.num_tokens));
  const bw = width / Math.max(steps.length, 1);
  const top2 = top + band + gap;
  return {
    width, height: top2 + band + 18, maxMs, maxTokens, top, top2, band,
    bars: steps.map((s, i) => {
      const th = (band * s.time_ms) / maxMs;
      const nh = (band * s.num_tokens) / maxTokens;
      return {
        step: s.step, phase: s.phase, x: r2(i * bw + 1), w: r2(Math.max(1, bw - 2)),
        time: {y: r2(top + band - th), h: r2(th)},
        tokens: {y: r2(top2 + band - nh), h: r2(nh)},
        label: `step ${s.step} (${s.phase}): ${s.num_tokens} tokens, context ${s.context_len}, ${s.time_ms} ms`,
      };
    }),
  };
}

// A log10 scale from [lo, hi] onto [a, b].
export function logScale([lo, hi], [a, b]) {
  const l0 = Math.log10(lo);
  const l1 = Math.log10(hi);
  return (v) => r2(a + ((b - a) * (Math.log10(v) - l0)) / (l1 - l0));
}

// Whole decades around every value (positive values only).
export function decadeDomain(values) {
  const xs = values.filter((v) => Number.isFinite(v) && v > 0);
  const lo = Math.floor(Math.log10(Math.min(...xs)));
  let hi = Math.ceil(Math.log10(Math.max(...xs)));
  if (hi <= lo) hi = lo + 1;
  return [10 ** lo, 10 ** hi];
}

export function decadeTicks([lo, hi]) {
  const ticks = [];
  for (let e = Math.round(Math.log10(lo)); e <= Math.round(Math.log10(hi)); e += 1) ticks.push(10 ** e);
  return ticks;
}

export function tickText(v) {
  const e = Math.round(Math.log10(v));
  return e >= 0 && e <= 3 ? String(10 ** e) : `1e${e}`;
}

// Where a step would be bound, against a roof's ridge point.
export function boundBy(intensity, ridge) {
  return intensity < ridge ? 'memory-bound' : 'compute-bound';
}

// The roofline of one machine with the steps on it. `measured`: the steps' dots sit at
// their achieved FLOP/s; otherwise (the GPU from its spec) they are projections drawn
// on the roof at their intensity, with no FLOP/s of their own.
export function roofline(roof, steps, {measured, width = 420, height = 300, left = 44, right = 16,
                                       top = 24, bottom = 40} = {}) {
  const intensities = steps.map((s) => s.intensity);
  const xDomain = decadeDomain([...intensities, roof.ridge / 4, roof.ridge * 4]);
  const roofAt = (i) => Math.min(roof.peak_gflops, roof.bandwidth_gbs * i);
  const ys = [roof.peak_gflops, roofAt(xDomain[0])];
  if (measured) ys.push(...steps.map((s) => s.gflops_per_s));
  const yDomain = decadeDomain(ys);
  const x = logScale(xDomain, [left, width - right]);
  const y = logScale(yDomain, [height - bottom, top]);
  const roofPoints = [[xDomain[0], roofAt(xDomain[0])], [roof.ridge, roof.peak_gflops],
                      [xDomain[1], roof.peak_gflops]];
  return {
    width, height, left, right, top, bottom, xDomain, yDomain,
    roof: roofPoints.map(([i, g]) => `${x(i)},${y(g)}`).join(' '),
    ridge: {x: x(roof.ridge), y: y(roof.peak_gflops), value: roof.ridge},
    xTicks: decadeTicks(xDomain).map((v) => ({v, at: x(v), text: tickText(v)})),
    yTicks: decadeTicks(yDomain).map((v) => ({v, at: y(v), text: tickText(v)})),
    dots: steps.map((s) => ({
      step: s.step, phase: s.phase, projected: !measured,
      x: x(s.intensity), y: y(measured ? s.gflops_per_s : roofAt(s.intensity)),
      label: measured
        ? `step ${s.step} (${s.phase}): ${s.intensity} FLOP/byte, measured ${s.gflops_per_s} GFLOP/s`
        : `step ${s.step} (${s.phase}): ${s.intensity} FLOP/byte, projection on this roof, not measured`,
    })),
  };
}

// One text label per phase, beside its first dot ("decode (projection)" on a roof
// that was not measured).
export function phaseLabels(dots) {
  return ['prefill', 'decode'].flatMap((phase) => {
    const d = dots.find((x) => x.phase === phase);
    return d ? [{phase, x: d.x + 7, y: d.y + (phase === 'prefill' ? -6 : 14),
                 text: d.projected ? `${phase} (projection)` : phase}] : [];
  });
}

function stepLine(s, ridge) {
  return `${s.phase} step ${s.step}: ${s.num_tokens} tokens, context ${s.context_len}, ${s.time_ms} ms, `
    + `intensity ${s.intensity} FLOP/byte, ${s.gflops_per_s} GFLOP/s, ${s.gb_per_s} GB/s `
    + `(${boundBy(s.intensity, ridge)} on this machine)`;
}

export function machineLine(m) {
  return `this machine (measured: ${m.method}): peak ${m.peak_gflops} GFLOP/s, `
    + `bandwidth ${m.bandwidth_gbs} GB/s, ridge ${m.ridge} FLOP/byte`;
}

export function gpuLine(g) {
  return `${g.name} (computed from the published spec, not measured): peak ${g.peak_gflops} GFLOP/s, `
    + `bandwidth ${g.bandwidth_gbs} GB/s, ridge ${g.ridge} FLOP/byte`;
}

export function readoutLines(data, machine = data.machine) {
  const {prefill, decode} = phaseGroups(data.steps);
  const sum = data.summary;
  const lines = [
    `prompt: ${data.prompt_tokens} tokens; ${data.steps.length} steps: ${prefill.length} prefill, `
      + `${decode.length} decode`,
    `model: ${data.model.params} parameters, ${data.model.dtype}, weights ${data.model.weight_bytes} bytes, `
      + `${data.model.flops_per_token} FLOP per token in the decoder layers' linears`,
    machineLine(machine),
    `  cpu: ${machine.cpu}`,
    gpuLine(data.gpu),
    ...prefill.map((s) => stepLine(s, machine.ridge)),
    `prefill: ${sum.prefill_ms} ms, intensity ${sum.prefill_intensity} FLOP/byte`,
  ];
  if (decode.length) {
    lines.push(stepLine(decode[0], machine.ridge),
      `decode: mean ${sum.decode_ms_mean} ms per step, mean intensity ${sum.decode_intensity_mean} FLOP/byte `
        + `(${boundBy(sum.decode_intensity_mean, machine.ridge)} on this machine, `
        + `${boundBy(sum.decode_intensity_mean, data.gpu.ridge)} on the ${data.gpu.name})`);
  } else {
    lines.push('decode: no decode step (one token asked for)');
  }
  return lines;
}
