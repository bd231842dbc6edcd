// What a disaggregated prefill/decode run (POST /scope/api/lab/disaggregation) says, as
// text: one request's lifecycle over the prefill server (kv_producer) and the decode
// server (kv_consumer), one entry per event that tells the story, and the counters that
// prove the point (the decode server computed none of the prompt, the K/V moved is the
// prompt's, the tokens equal one engine's). No DOM here.

import {int, bytes, plural} from '../format.js';

export const CONNECTORS = ['ZmqConnector', 'SharedStorageConnector'];
export const SIDES = ['prefill', 'decode'];
export const MAX_TOKENS = {min: 2, max: 64};
export const BLOCK_SIZE = {min: 4, max: 64};

export const ms = (x, digits = 1) => `${x.toFixed(digits)} ms`;
export const blocksText = (ids) => `${ids.length === 1 ? 'block' : 'blocks'} ${ids.join(', ')}`;
export const tokenText = (id, text) => `${id} ${JSON.stringify(text)}`;
export const bytesText = (n) => `${int(n)} bytes (${bytes(n)})`;

function positions(start, n) {
  return n === 1 ? `position ${start}` : `positions ${start}–${start + n - 1}`;
}

// The order the lesson tells the events in, as [side, index] pairs: the prefill
// server's up to the end of its last step, then the decode server's, then what the
// prefill server recorded after that. The two engines keep separate clocks, so this is
// the order of the run (the decode engine starts once the prefill answered; the
// producer notices that its K/V was taken between steps, here after the decode).
export function lifecycleOrder(data) {
  const pre = data.prefill.events;
  const lastStep = pre.map((e) => e.kind).lastIndexOf('step_end');
  const cut = lastStep < 0 ? pre.length : lastStep + 1;
  const span = (side, from, to) => Array.from({length: to - from}, (_, k) => [side, from + k]);
  return [...span('prefill', 0, cut), ...span('decode', 0, data.decode.events.length),
          ...span('prefill', cut, pre.length)];
}

function stepText(events, begin, side, outputs) {
  let end = begin + 1;
  while (end < events.length && events[end].kind !== 'step_end') end += 1;
  const stepEnd = events[end];
  if (!stepEnd || !stepEnd.batch.length) return null;
  const tokens = events.slice(begin, end).filter((e) => e.kind === 'token_emitted');
  const work = stepEnd.batch.map((c) => `${c.phase} ${plural(c.num_tokens, 'token')} at `
    + positions(c.start, c.num_tokens)).join(' + ');
  let text = `step ${stepEnd.step}: ${work}, forward ${ms(stepEnd.forward_ms)}`;
  if (tokens.length) {
    const list = tokens.map((t) => tokenText(t.token_id, t.text)).join(', ');
    const first = side === 'prefill' && outputs === 0;
    text += first ? `, first token ${list} sampled`
      : `, ${tokens.length === 1 ? 'token' : 'tokens'} ${list} sampled`;
  }
  return {text, step: stepEnd};
}

function transferText(e, table, state) {
  const moved = `${plural(e.num_tokens, 'token')}, ${bytesText(e.num_bytes)}`;
  const took = ms(1000 * e.seconds, 2);
  switch (e.direction) {
    case 'save': return `K/V saved to shared storage: ${moved} in ${took}`;
    case 'send': return `K/V sent to the decode server: ${moved}, copied out in ${took}`;
    case 'release': return e.reason === 'timeout'
      ? 'hold released: nobody took the K/V in time'
      : 'hold released: the decode server took the K/V';
    case 'load':
      if (!e.ok) {
        state.failed = true;
        return `K/V load failed (${e.reason}): this server computes the prompt itself`;
      }
      return `K/V loaded: ${moved} in ${took} into ${blocksText(table)}`;
    default: return `K/V ${e.direction}: ${moved}`;
  }
}

function freedWhy(side, last) {
  if (side !== 'prefill' || !last) return '';
  if (last.direction === 'save') return ' (its K/V is in shared storage)';
  if (last.direction === 'release') {
    return last.reason === 'timeout' ? ' (the hold timed out)' : ' (after the decode server took the K/V)';
  }
  return '';
}

// One entry per event that tells the story, in lifecycleOrder: {side, kind, index (of
// the event in its side's list), text, blocks (that side's table for the request after
// it), transfer (a kv_transferred event), fromProducer (the decode server's first token)}.
export function entries(data) {
  const params = data.kv_transfer_params ?? {};
  const states = Object.fromEntries(SIDES.map((s) => [s, {table: [], begin: -1, told: false,
                                                         outputs: 0, lastKv: null, failed: false}]));
  const out = [];
  for (const [side, index] of lifecycleOrder(data)) {
    const events = data[side].events;
    const e = events[index];
    const st = states[side];
    let text = null;
    let extra = {};
    switch (e.kind) {
      case 'request_arrived':
        text = side === 'decode'
          ? `request ${e.request_id} arrived with kv_transfer_params (num_tokens ${params.num_tokens}, `
            + `first_token_id ${params.first_token_id}): ${plural(e.prompt_token_ids.length, 'prompt token')}, `
            + `max_tokens ${e.max_tokens}`
          : `request ${e.request_id} arrived: ${plural(e.prompt_token_ids.length, 'prompt token')}, `
            + `max_tokens ${e.max_tokens}`;
        break;
      case 'blocks_allocated':
        st.table.push(...e.block_ids);
        text = `${blocksText(e.block_ids)} allocated`
          + (e.evicted.length ? ` (${blocksText(e.evicted)} evicted from the prefix cache)` : '');
        break;
      case 'blocks_shared':
        st.table.push(...e.block_ids);
        text = `${blocksText(e.block_ids)} shared from the prefix cache`;
        break;
      case 'blocks_freed':
        st.table = st.table.filter((b) => !e.block_ids.includes(b));
        text = `${blocksText(e.block_ids)} freed${freedWhy(side, st.lastKv)}`;
        break;
      case 'request_scheduled':
        text = `scheduled with ${plural(e.num_computed_tokens, 'token')} already computed`;
        break;
      case 'step_begin':
        st.begin = index;
        st.told = false;
        break;
      case 'token_emitted':
        if (st.begin >= 0) {
          if (!st.told) {
            const step = stepText(events, st.begin, side, st.outputs);
            if (step) text = step.text;
            st.told = true;
          }
        } else {
          text = `first token ${tokenText(e.token_id, e.text)} taken from the prefill server `
            + '(not computed here)';
          extra = {fromProducer: true};
        }
        st.outputs += 1;
        break;
      case 'step_end':
        if (!st.told) {
          const step = stepText(events, st.begin, side, st.outputs);
          if (step) text = step.text;
        }
        st.begin = -1;
        st.told = false;
        break;
      case 'kv_transferred':
        text = transferText(e, st.table, st);
        st.lastKv = e;
        extra = {transfer: true};
        break;
      case 'request_finished':
        text = `request ${e.request_id} finished (${e.reason}) after ${plural(e.num_output_tokens, 'token')}`;
        break;
      default:
        break;
    }
    if (text !== null) {
      out.push({side, kind: e.kind, index, text, blocks: [...st.table], transfer: false,
                fromProducer: false, ...extra});
    }
  }
  return out;
}

export const entryLine = (entry) => `${entry.side}: ${entry.text}`;

// Each side's blocks for the request after entry `at`: those of its last entry so far.
export function heldAt(list, at) {
  const held = {prefill: [], decode: []};
  for (const entry of list.slice(0, at + 1)) held[entry.side] = entry.blocks;
  return held;
}

export function engineOf(side) {
  return side.events.find((e) => e.kind === 'engine_started') ?? null;
}

// The bytes one token's K and V take, as the engine computes them.
export function perTokenFormula(e) {
  const dtypeBytes = e.kv_bytes_per_token / (2 * e.num_layers * e.num_kv_heads * e.head_dim);
  return `2 × ${e.num_layers} layers × ${e.num_kv_heads} KV heads × ${e.head_dim} head dim × `
    + `${dtypeBytes} bytes (${e.dtype}) = ${int(e.kv_bytes_per_token)} bytes per token`;
}

export const transfers = (side) => side.events.filter((e) => e.kind === 'kv_transferred');
export const loadOf = (data) => transfers(data.decode).find((e) => e.direction === 'load') ?? null;
// The producer's half of the move: the save to storage or the send to the consumer.
export const moveOf = (data) => transfers(data.prefill)
  .find((e) => e.direction === 'save' || e.direction === 'send') ?? null;

function arrivalOf(side) {
  return side.events.find((e) => e.kind === 'request_arrived') ?? null;
}

export function headerLine(data) {
  const e = engineOf(data.decode);
  const arrived = arrivalOf(data.decode);
  return `${data.connector}: ${plural(data.prompt_token_ids.length, 'prompt token')}, max_tokens `
    + `${arrived ? arrived.max_tokens : '?'}; blocks of ${e.block_size} tokens, ${e.dtype}, `
    + `${int(e.kv_bytes_per_token)} KV bytes per token`;
}

export function sideLine(data, side) {
  const s = data[side].stats;
  return `${side} server: ${int(s.num_computed_prompt_tokens)} of ${int(data.prompt_token_ids.length)} `
    + `prompt tokens computed, ${plural(s.num_computed_tokens, 'token')} in ${plural(s.num_steps, 'step')}; `
    + `${s.num_free_blocks} of ${s.num_blocks} blocks free at the end`;
}

// The K/V that moved: what the prompt's tokens take by the engine's per-token size,
// against what the decode server's load measured.
export function movedLine(data) {
  const load = loadOf(data);
  if (!load || !load.ok) {
    return `K/V moved: none (${load ? `the load failed: ${load.reason}` : 'no load'}); `
      + 'the decode server computed the prompt itself';
  }
  const perToken = engineOf(data.decode).kv_bytes_per_token;
  const n = data.prompt_token_ids.length;
  const expected = n * perToken;
  const same = load.num_bytes === expected && load.num_tokens === n;
  const move = moveOf(data);
  const times = [move ? `${move.direction} ${ms(1000 * move.seconds, 2)}` : null,
                 `load ${ms(1000 * load.seconds, 2)}`].filter(Boolean).join(', ');
  return `K/V moved: ${plural(n, 'token')} × ${int(perToken)} bytes per token = ${bytesText(expected)}, `
    + `${same ? 'as the load measured' : `but the load measured ${bytesText(load.num_bytes)}`}; `
    + `measured time: ${times}`;
}

export function tokensLine(data) {
  const ids = data.output.token_ids.join(', ');
  return data.single.identical
    ? `tokens: ${ids}; a single engine's: identical`
    : `tokens: ${ids}; a single engine's differ: ${data.single.token_ids.join(', ')}`;
}

export function totalsLines(data) {
  return [sideLine(data, 'prefill'), sideLine(data, 'decode'), movedLine(data), tokensLine(data)];
}

export function readoutLines(data, list = entries(data)) {
  return [headerLine(data), ...list.map(entryLine), ...totalsLines(data)];
}

const forwards = (side) => side.events.filter((e) => e.kind === 'step_end').map((e) => e.forward_ms);

// The counters panel: [label, value, how it is known].
export function counters(data) {
  const n = data.prompt_token_ids.length;
  const [pre, dec] = [data.prefill.stats, data.decode.stats];
  const e = engineOf(data.decode);
  const load = loadOf(data);
  const move = moveOf(data);
  const decodeMs = forwards(data.decode);
  const rows = [
    ['Prompt tokens the prefill server computed', `${int(pre.num_computed_prompt_tokens)} of ${int(n)}`,
     'measured: its engine counter'],
    ['Prompt tokens the decode server computed', `${int(dec.num_computed_prompt_tokens)} of ${int(n)}`,
     'measured: its engine counter'],
    ['K/V bytes per token', int(e.kv_bytes_per_token), `computed: ${perTokenFormula(e)}`],
    ['K/V the prompt takes', bytesText(n * e.kv_bytes_per_token),
     `computed: ${int(n)} tokens × ${int(e.kv_bytes_per_token)} bytes`],
  ];
  if (move) {
    rows.push([move.direction === 'save' ? 'K/V saved by the prefill server' : 'K/V sent by the prefill server',
               `${bytesText(move.num_bytes)} in ${ms(1000 * move.seconds, 2)}`,
               'measured: its kv_transferred event']);
  }
  rows.push(load && load.ok
    ? ['K/V loaded by the decode server', `${bytesText(load.num_bytes)} in ${ms(1000 * load.seconds, 2)}`,
       'measured: its kv_transferred event']
    : ['K/V loaded by the decode server', 'none: the load failed', load ? load.reason : 'no load event']);
  const preMs = forwards(data.prefill);
  if (preMs.length) {
    rows.push(['Prefill server forward time', `${ms(preMs.reduce((a, b) => a + b, 0))} in ${plural(preMs.length, 'step')}`,
               'measured: step_end forward_ms']);
  }
  if (decodeMs.length) {
    const total = decodeMs.reduce((a, b) => a + b, 0);
    rows.push(['Decode server forward time', `${ms(total)} in ${plural(decodeMs.length, 'step')} `
      + `(${ms(total / decodeMs.length)} a step)`, 'measured: step_end forward_ms']);
  }
  rows.push(['Same tokens as a single engine', data.single.identical ? 'yes' : 'no',
             `compared: ${plural(data.single.token_ids.length, 'token')} of a third engine that ran the prompt alone`]);
  return rows;
}

// The request body from the form's values; throws with a reader-facing message.
export function disaggBody({prompt, maxTokens, connector, blockSize}) {
  if (!prompt.trim()) throw new Error('write a prompt first');
  const between = (x, {min, max}) => Number.isInteger(x) && x >= min && x <= max;
  if (!between(maxTokens, MAX_TOKENS)) {
    throw new Error(`tokens to generate must be a whole number from ${MAX_TOKENS.min} to ${MAX_TOKENS.max}`);
  }
  if (!between(blockSize, BLOCK_SIZE)) {
    throw new Error(`the block size must be a whole number from ${BLOCK_SIZE.min} to ${BLOCK_SIZE.max}`);
  }
  if (!CONNECTORS.includes(connector)) throw new Error(`unknown connector ${connector}`);
  return {prompt, max_tokens: maxTokens, connector, block_size: blockSize};
}
