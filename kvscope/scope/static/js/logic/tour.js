// The tour: seven ideas, one stop each. A stop names the lab run(s) that make its
// picture (small and quick, except the two that start worker processes, which wait for
// the reader's button) and turns the responses into what the page draws and the
// readout's lines, through the lessons' own logic modules. No DOM here.

import {Timeline} from '../timeline.js';
import {int, plural, bytes} from '../format.js';
import {readoutLines as pagedLines, arrivalSteps} from './paged-attention.js';
import {labBody, figures, lanes} from './batching-lab.js';
import {prefixChain, SECOND} from './prefix-caching.js';
import {speculativeRun} from './speculative-decoding.js';
import {runBody, runFigures, longId} from './chunked-prefill.js';
import {tensorRun, weightShares, counted} from './tensor-parallelism.js';
import {disaggBody, loadOf, moveOf, sideLine} from './disaggregation.js';

const LAB = 'lab/run';

// -- the runs -----------------------------------------------------------------------------

const PAGED = {
  prompts: ['The moon is', 'Rivers flow toward the sea because', 'A good cup of tea needs'],
  max_tokens: 6, block_size: 4, num_blocks: 16, arrive_at_step: arrivalSteps(3, 1),
  enable_prefix_caching: false,
};

// two seats, one long answer and three short ones: the short ones wait for it (static) or not
const BATCH_ROWS = [{words: 8, output: 12, arrival: 0}, {words: 8, output: 3, arrival: 0},
  {words: 8, output: 3, arrival: 0}, {words: 8, output: 3, arrival: 0}];
const SEATS = 2;

const OPENING = 'You help the visitors of a small city museum. Answer in one friendly sentence. ';
const PREFIX = {
  prompts: [`${OPENING}Question: where is the cloakroom?`, `${OPENING}Question: may I take photos?`],
  arrive_at_step: [0, 2], max_tokens: 4, block_size: 4, num_blocks: 32, enable_prefix_caching: true,
};

const SPEC = {
  prompts: ['red green blue, red green blue, red green blue, red green blue, red green blue,'],
  max_tokens: 24, block_size: 4, num_blocks: 32, enable_prefix_caching: false,
  speculative_config: {method: 'ngram', num_speculative_tokens: 4},
};

const CHUNKED = runBody({
  shorts: ['The three primary colours are', 'A recipe for bread starts with'],
  long: 'A lighthouse keeper on a small rocky island kept a notebook of every ship that passed. '
    + 'Some days there were none; on others the fishing boats came out at dawn in a long line, '
    + 'and the ferry from the mainland crossed twice before noon. She wrote the weather too.',
  maxTokens: 10, arriveAt: 2,
}, 24);

const TENSOR = {prompts: ['The capital of France is'], max_tokens: 4, block_size: 4, num_blocks: 32,
                enable_prefix_caching: false, tensor_parallel_size: 2, watch_layer: 0};

const DISAGG = disaggBody({prompt: 'A lighthouse keeper writes one letter every week to her sister.',
                           maxTokens: 6, connector: 'ZmqConnector', blockSize: 16});

// -- what each run shows --------------------------------------------------------------------

function paged([data]) {
  const timeline = new Timeline(data.events);
  // the step after which the pool held the most blocks (several requests side by side)
  let best = timeline.stops[0] ?? timeline.length;
  let most = -1;
  for (const stop of timeline.stops) {
    const state = timeline.seek(stop);
    const held = Object.values(state.tables).reduce((n, t) => n + t.length, 0);
    if (held > most) {
      most = held;
      best = stop;
    }
  }
  const state = timeline.seek(best);
  const holders = Object.keys(state.tables).length;
  return {state, timeline, heldBlocks: most, holders,
          lines: [`after step ${state.step}: ${plural(holders, 'request')} hold ${plural(most, 'block')} `
            + `of one pool of ${state.blocks.length}, each through its own block table`,
          ...pagedLines(state, timeline)]};
}

function batching([continuous, fixed]) {
  const c = figures(continuous, 'continuous');
  const s = figures(fixed, 'static');
  return {continuous: c, fixed: s, lanes: lanes(c.summary), staticLanes: lanes(s.summary, s.batches),
          lines: [`${plural(BATCH_ROWS.length, 'request')}, ${SEATS} seats: continuous batching took `
            + `${plural(c.steps, 'step')}, static batching ${plural(s.steps, 'step')}`,
          `continuous: ${plural(c.steps, 'step')}, ${c.outputTokens} output tokens, seats busy ${int(100 * c.utilisation)}%`,
          `static: ${plural(s.steps, 'step')}, ${s.outputTokens} output tokens, seats busy ${int(100 * s.utilisation)}%`]};
}

function prefix([data]) {
  const chain = prefixChain(data.events);
  const {lookup} = chain;
  const computed = chain.numTokens - lookup.hit_tokens;
  return {chain, lines: [
    `request ${SECOND}: ${lookup.hit_tokens} of ${chain.numTokens} prompt tokens found in the prefix cache `
      + `(${plural(lookup.block_ids.length, 'block')}: ${lookup.block_ids.join(', ') || 'none'})`,
    `computed: ${plural(computed, 'token')}; shared with request 0: ${plural(lookup.block_ids.length, 'block')} of ${chain.bs} tokens`,
  ]};
}

function speculative([data], body = SPEC) {
  const run = speculativeRun(data, body);
  const drafts = run.passes.reduce((n, p) => n + p.drafts.length, 0);
  const accepted = run.passes.reduce((n, p) => n + p.accepted, 0);
  const tokens = run.output.token_ids.length;
  const steps = data.events.filter((e) => e.kind === 'step_end').length;
  return {run, drafts, accepted, lines: [
    `${run.passes.length} verifying ${run.passes.length === 1 ? 'pass' : 'passes'}: ${drafts} drafts proposed, ${accepted} accepted`,
    `${plural(tokens, 'token')} generated in ${plural(steps, 'step')} (prefill included)`,
  ]};
}

function chunked([data], body = CHUNKED) {
  const fig = runFigures(data.events, longId(body));
  const together = fig.steps.filter((s) => s.chunk && s.batch.some((c) => c.phase !== 'prefill')).length;
  return {fig, lines: [
    `long prompt: ${plural(fig.promptTokens, 'token')} prefilled in ${plural(fig.chunks.length, 'chunk')} `
      + `(${fig.chunks.join(' + ')}) at steps ${fig.chunkSteps.join(', ')}, budget ${fig.budget} tokens a step`,
    `steps where a chunk ran beside other requests' decodes: ${together} of ${fig.chunks.length}`,
  ]};
}

function tensor([data]) {
  const run = tensorRun(data);
  const shares = weightShares(run);
  const steps = run.steps;
  const collectives = steps.length ? steps[0].num_collectives : 0;
  return {run, shares, lines: [
    ...run.ranks.map((r, i) => `rank ${r.rank}: ${counted('query head', r.q_heads)}, ${counted('KV head', r.kv_heads)}, `
      + `${int(shares[i].count)} weights of each layer (${(100 * shares[i].share).toFixed(1)}%)`),
    `collectives in step 0: ${collectives}; ${plural(steps.length, 'step')} run on 2 worker processes`,
  ]};
}

function disagg([data]) {
  const load = loadOf(data);
  const move = moveOf(data);
  const n = data.prompt_token_ids.length;
  return {data, load, move, lines: [
    load && load.ok
      ? `K/V of ${plural(load.num_tokens, 'prompt token')} moved: ${int(load.num_bytes)} bytes (${bytes(load.num_bytes)}), `
        + `load ${(1000 * load.seconds).toFixed(2)} ms${move ? `, ${move.direction} ${(1000 * move.seconds).toFixed(2)} ms` : ''}`
      : `no K/V moved: the decode server computed the ${plural(n, 'prompt token')} itself`,
    sideLine(data, 'prefill'),
    sideLine(data, 'decode'),
  ]};
}

// -- the stops ------------------------------------------------------------------------------

export const STOPS = [
  {id: 'paged', title: 'Paged attention', lesson: 'paged-attention',
   says: ['The KV cache is cut into fixed-size blocks, and each request keeps a small table that says '
     + 'which physical block holds each stretch of its tokens.',
   'Blocks are handed out as a request grows, so many requests share one pool with almost nothing reserved and unused.'],
   runs: [{path: LAB, body: PAGED}], analyse: paged},
  {id: 'batching', title: 'Continuous batching', lesson: 'batching-lab',
   says: ['The scheduler forms a new batch at every step: a request that finishes leaves at once and a '
     + 'waiting one takes its seat on the next step.',
   'A static batcher would keep the seats of finished requests idle until the whole batch is done.'],
   runs: [{path: LAB, body: labBody(BATCH_ROWS, SEATS, 'continuous')},
          {path: LAB, body: labBody(BATCH_ROWS, SEATS, 'static')}], analyse: batching},
  {id: 'prefix', title: 'Prefix caching', lesson: 'prefix-caching',
   says: ['Each full block is filed under a hash of its tokens chained with the hash of the block before it, '
     + 'so two prompts with the same opening produce the same hashes.',
   'A later request that starts the same way finds those blocks and shares them instead of computing them again.'],
   runs: [{path: LAB, body: PREFIX}], analyse: prefix},
  {id: 'speculative', title: 'Speculative decoding', lesson: 'speculative-decoding',
   says: ['A cheap proposer guesses a few tokens ahead, here by finding the latest words earlier in the text '
     + 'and copying what came after them.',
   'The model checks every guess in one pass and keeps those it agrees with, so the output is what it would have written alone.'],
   runs: [{path: LAB, body: SPEC}], analyse: speculative},
  {id: 'chunked', title: 'Chunked prefill', lesson: 'chunked-prefill',
   says: ['A step has a token budget, and a long prompt that does not fit is fed in pieces over several steps.',
   'The requests already decoding keep getting a token at every one of those steps instead of waiting for the whole prompt.'],
   runs: [{path: LAB, body: CHUNKED}], analyse: chunked},
  {id: 'tensor', title: 'Tensor parallelism', lesson: 'tensor-parallelism', heavy: true,
   says: ['Every layer\'s weights are split across ranks, each computing its share of the heads and neurons '
     + 'for all the tokens of a step.',
   'The partial results are summed across ranks (an all-reduce) after the attention and after the MLP of each layer.'],
   runs: [{path: LAB, body: TENSOR}], analyse: tensor,
   wait: 'starts two worker processes, each loading its half of the model: about 15 s on this machine'},
  {id: 'disagg', title: 'Disaggregated prefill/decode', lesson: 'disaggregation', heavy: true,
   says: ['One engine computes the prompt and a second one generates the answer, so each can be sized and tuned for its own phase.',
   'Between them the prompt\'s keys and values travel as data, so the second engine never computes the prompt.'],
   runs: [{path: 'lab/disaggregation', body: DISAGG}], analyse: disagg,
   wait: 'starts a prefill engine and a decode engine and moves the K/V between them: about 15 s'},
];

// What a heavy stop says before its run: the engine's own figures, labelled as such.
export function computedLines(stop, engine) {
  if (!engine) return ['the server did not describe its engine'];
  if (stop.id === 'tensor') {
    return [`computed from the engine's description, not run: each of its ${engine.num_layers} layers has `
      + `${engine.num_heads} query heads and ${engine.num_kv_heads} KV heads to split over 2 ranks`];
  }
  return [`computed from the engine's description, not run: each prompt token's K and V take `
    + `${int(engine.kv_bytes_per_token)} bytes (${engine.num_layers} layers, ${engine.num_kv_heads} KV heads of `
    + `${engine.head_dim}, ${engine.dtype}): that is what the second engine receives per token`];
}

// The readout of a stop: where it is on the tour, then its lines.
export function stopReadout(index, lines) {
  const stop = STOPS[index];
  return [`stop ${index + 1} of ${STOPS.length}: ${stop.title}`, ...lines];
}
