// The transformer-block lesson's logic, free of the DOM: the seven points of one
// token's path through one decoder layer, the MLP neurons, the residual stream
// through every layer (chart coordinates), and the readout. Every value printed is
// one the server measured in the real forward pass.

export const q = (text) => JSON.stringify(text);

// SVG coordinates to 1/100 of a unit
export const r2 = (x) => Math.round(x * 100) / 100;

// The path's seven points, in order, and what produced each one.
export const STEPS = [
  {name: 'residual in', op: 'the residual stream entering the layer'},
  {name: 'input RMSNorm', op: 'RMSNorm of the stream, times its learned weight'},
  {name: 'attention output', op: 'self-attention over this and every earlier position (o_proj output)'},
  {name: 'residual after attention', op: 'residual in + attention output'},
  {name: 'post-attention RMSNorm', op: 'RMSNorm of the stream, times its learned weight'},
  {name: 'MLP output', op: 'down_proj(silu(gate_proj(x)) · up_proj(x))'},
  {name: 'residual out', op: 'residual after attention + MLP output: the next layer\'s input'},
];

// Which points are the residual stream itself (the others are side branches).
const STREAM = new Set(['residual in', 'residual after attention', 'residual out']);

export function flowRows(path) {
  const top = Math.max(1e-30, ...path.map((p) => p.norm));
  return path.map((p, i) => ({
    name: p.name,
    norm: p.norm,
    op: STEPS.find((s) => s.name === p.name)?.op ?? '',
    stream: STREAM.has(p.name),
    width: (100 * p.norm) / top,
    index: i,
  }));
}

export function neuronRows(mlpTop) {
  const top = Math.max(1e-30, ...mlpTop.map((n) => Math.abs(n.activation)));
  return mlpTop.map((n) => ({
    ...n,
    width: (100 * Math.abs(n.activation)) / top,
    sign: n.activation < 0 ? 'neg' : 'pos',
  }));
}

// The residual stream's norm at the layer boundaries: the embedding row, then the
// output of every layer.
export function residualSeries(data) {
  return [
    {at: 0, label: 'embedding', layer: null, value: data.embedding_norm},
    ...data.layers.map((l) => ({at: l.layer + 1, label: `after layer ${l.layer}`, layer: l.layer,
                                value: l.residual_out})),
  ];
}

// Chart coordinates for the series: x by boundary, y linear from 0 to the largest value.
export function residualChart(series, {width = 600, height = 200, left = 40, right = 10,
                                       top = 12, bottom = 26} = {}) {
  const maxAt = Math.max(1, ...series.map((s) => s.at));
  const maxValue = Math.max(1e-30, ...series.map((s) => s.value));
  const x = (at) => r2(left + ((width - left - right) * at) / maxAt);
  const y = (v) => r2(top + ((height - top - bottom) * (maxValue - v)) / maxValue);
  const points = series.map((s) => ({...s, x: x(s.at), y: y(s.value)}));
  return {
    width, height, maxValue, points,
    line: points.map((p) => `${p.x},${p.y}`).join(' '),
    baseline: y(0),
    xLeft: left,
    xRight: width - right,
  };
}

// The largest residual norm and where it is (a selection, not a new number).
export function largest(series) {
  return series.reduce((best, s) => (s.value > best.value ? s : best), series[0]);
}

export function positionOptions(tokens) {
  return tokens.map((t, i) => ({value: String(i), text: `${i}: ${q(t)}`}));
}

export function readoutLines(data) {
  const p = data.position;
  const lines = [
    `prompt: ${data.tokens.length} tokens; position ${p} (${q(data.tokens[p])}, id ${data.token_ids[p]}); `
      + `layer ${data.layer} of ${data.num_layers} (0–${data.num_layers - 1})`,
    `hidden size ${data.hidden_size}, MLP intermediate size ${data.intermediate_size}`,
    'vector norms along the path:',
    ...data.path.map((s) => `  ${s.name}: ${s.norm}`),
    `top ${data.mlp_top.length} MLP neurons by |silu(gate)·up|:`,
    ...data.mlp_top.map((n) => `  neuron ${n.neuron}: gate ${n.gate}, up ${n.up}, silu(gate)·up ${n.activation}`),
    `embedding norm: ${data.embedding_norm}`,
    `residual out by layer: ${data.layers.map((l) => String(l.residual_out)).join(', ')}`,
    `after the final RMSNorm: ${data.final_norm}`,
  ];
  const big = largest(residualSeries(data));
  lines.push(`largest residual norm: ${big.value} (${big.label})`);
  return lines;
}
