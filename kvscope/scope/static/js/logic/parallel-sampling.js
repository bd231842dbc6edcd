// What a parallel-sampling run says: the prompt's blocks, the moment the most blocks
// were held against what separate requests would have held, the copies made on write,
// and the readout's lines. No DOM here.

import {emptyState, applyEvent, poolSummary, sharing} from '../state.js';
import {bytes, int, plural} from '../format.js';

// The moment the most blocks were held, and what the same block tables would hold
// if every sequence were a separate request with a copy of the prompt of its own.
export function peakOf(events) {
  const state = emptyState();
  let best = null;
  for (const e of events) {
    applyEvent(state, e);
    const s = sharing(state);
    if (!best || s.held > best.held) {
      best = {held: s.held, referenced: s.referenced, step: e.step,
              sequences: Object.keys(state.tables).length};
    }
  }
  return best;
}

export function samplingRun(data) {
  const {events} = data;
  const arrived = events.find((e) => e.kind === 'request_arrived');
  const bs = events[0].block_size;
  const promptLen = arrived.prompt_token_ids.length;
  return {
    bs, promptLen,
    bytesPerToken: events[0].kv_bytes_per_token,
    blockBytes: bs * events[0].kv_bytes_per_token,
    promptBlocks: Math.ceil(promptLen / bs),
    fullBlocks: Math.floor(promptLen / bs),
    peak: peakOf(events),
    completions: data.outputs[0].completions,
  };
}

export function promptLine(run) {
  const {promptLen, promptBlocks, bs, fullBlocks} = run;
  const rest = promptLen % bs;
  const how = rest === 0 ? 'all full: nothing to copy'
    : `${fullBlocks} full, the last holds ${rest}`;
  return `prompt: ${promptLen} tokens in ${promptBlocks} blocks of ${bs} (${how})`;
}

// At the peak, the blocks the sequences' tables hold beyond their copies of the prompt.
const ownBlocks = ({peak, promptBlocks}) => peak.referenced - peak.sequences * promptBlocks;

export function memoryLine(run) {
  const {peak, promptBlocks} = run;
  return `memory at the peak, computed from this run's sizes: ${peak.held} blocks held with `
    + `sharing (step ${peak.step}); as ${peak.sequences} separate requests: ${peak.sequences} × `
    + `${promptBlocks} prompt blocks + ${ownBlocks(run)} blocks of their own = ${peak.referenced}`;
}

// The two memory bars: {label, blocks, kind}, with the block's size in bytes for their text.
export function memoryBars(run) {
  const {peak, promptBlocks} = run;
  return [
    {label: `with sharing, this run at its peak (step ${peak.step})`, blocks: peak.held, kind: 'held'},
    {label: `${peak.sequences} separate requests: ${peak.sequences} × ${promptBlocks} prompt blocks `
      + `+ ${ownBlocks(run)} of their own`, blocks: peak.referenced, kind: ''},
  ];
}

export function memoryNote(run) {
  const {peak, blockBytes} = run;
  const saved = peak.referenced - peak.held;
  return 'The first bar is what the engine held, from its events. The '
    + 'second is computed from this run\'s sizes, not measured: the same block tables with nothing '
    + `shared (prompt ${run.promptLen} tokens; a block is ${run.bs} tokens × `
    + `${int(run.bytesPerToken)} bytes per token = ${bytes(blockBytes)}). `
    + `Sharing saved ${plural(saved, 'block')} (${bytes(saved * blockBytes)}).`;
}

// The copy-on-write events up to the timeline's position.
export function copiesSoFar(timeline) {
  return timeline.events.slice(0, timeline.pos).filter((e) => e.kind === 'copy_on_write');
}

// The blocks copied into at `step`.
export function copiedAt(copies, step) {
  return new Set(copies.filter((e) => e.step === step).map((e) => e.dst_block_id));
}

export function readoutLines(run, state, timeline) {
  const s = sharing(state);
  const lines = [
    `step ${timeline.lastEvent ? state.step : 0}, event ${timeline.pos} of ${timeline.length}`,
    promptLine(run),
  ];
  for (const rid of state.order) {
    const req = state.requests[rid];
    lines.push(`sequence ${rid} (${req.status}, ${req.numComputed} tokens computed, `
      + `${req.outputTokenIds.length} generated): [${(state.tables[rid] ?? []).join(', ')}]`);
  }
  lines.push(`shared blocks: ${s.shared.length
    ? s.shared.map(([id, ref]) => `${id} (refcount ${ref})`).join(', ') : 'none'}`);
  lines.push(`copy-on-write copies so far: ${copiesSoFar(timeline).length}`);
  const p = poolSummary(state);
  lines.push(`free blocks: ${p.freeCount} of ${p.total}`);
  lines.push(`blocks held: ${s.held}; the same tables without sharing: ${s.referenced}`);
  lines.push(memoryLine(run));
  if (timeline.atEnd) {
    lines.push('completions:');
    run.completions.forEach((c, i) => lines.push(`  ${i}: ${JSON.stringify(c.text)}`));
  }
  return lines;
}

// Pool size for a run: the prompt, and every sequence's own blocks with one being copied.
export function poolBlocks(promptTokens, blockSize, maxTokens, n) {
  const room = Math.ceil(promptTokens / blockSize) + n * (Math.ceil(maxTokens / blockSize) + 1) + 4;
  return Number.isFinite(room) ? Math.max(8, Math.min(512, room)) : 64;
}
