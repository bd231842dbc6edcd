// The recap's rows: what each technique buys, the lab runs that measure it (the same
// request bodies as its lesson's defaults) and the headline figure computed from those
// runs' events with the lesson's own logic. No DOM here; ../pages/recap.js sends the runs.

import {pct, plural} from '../format.js';
import {runTotals, waste} from './fragmentation.js';
import {PRESETS, DEFAULT_SEATS, labBody, figures} from './batching-lab.js';
import {UNCHUNKED_BUDGET, runBody, longId, runFigures, collapse} from './chunked-prefill.js';
import {prefixChain} from './prefix-caching.js';

// -- the workloads (each its lesson's default) ------------------------------------------

const FRAGMENTATION_PROMPTS = [
  'Tell me a story about a lighthouse keeper who finds a message in a bottle',
  'Hi', 'List three fruits', 'Explain why the sky is blue in one short paragraph'];

const PREFIX = 'You are the assistant of a small bakery in Lyon. Answer in one short, '
  + 'friendly sentence, and always mention that the rye loaf is on sale today.';

const CHUNKED = {
  shorts: ['The three primary colours are', 'Counting from one: one, two, three,',
           'A recipe for bread starts with'],
  long: collapse(`A lighthouse keeper on a small rocky island kept a notebook of every ship that passed.
Each morning she climbed the spiral stairs, cleaned the great lens with a soft cloth,
trimmed the wick and wound the clockwork that turned the light through the night. Fishing
boats went out at dawn and came back in the afternoon with gulls circling behind them;
cargo ships crossed the horizon slowly, low in the water, on their way to ports she had
only seen on maps. In autumn the storms came from the west, and she sat by the window
listening to the waves break on the rocks below, counting the seconds between the flashes
of the lighthouse on the next headland. When the supply boat came once a fortnight, it
brought flour, lamp oil, letters from her sister and a newspaper that was already a week
old. She read every page of it, even the advertisements, and then used it to light the
stove. Over the years the notebook grew into a shelf of notebooks, and the shelf into a
small library of weather, ships and tides that the harbour master in town borrowed more
than once, when nobody else could remember the winter the bay froze over. Write a short
poem about her in four lines.`),
  maxTokens: 32,
  arriveAt: 4,
};
export const CHUNK_BUDGET = 32;

export const SPEC_TEXT = 'Repeat the following text exactly:\n\nThe lighthouse keeper climbed the '
  + 'spiral stairs every evening at dusk. He trimmed the wick, polished the great lens, and wrote '
  + 'the weather in a leather logbook. Ships passing the rocks at night saw his light sweep across '
  + 'the water every ten seconds.';
export const SPEC_CONFIG = {method: 'ngram', num_speculative_tokens: 4, prompt_lookup_max: 3};

// The speculative run of a prompt already in the chat format (the page asks the server
// for that, as the lesson does).
export function speculativeBody(prompt) {
  return {
    prompts: [prompt], max_tokens: 48, block_size: 4, num_blocks: 160,
    enable_prefix_caching: false, ignore_eos: false, temperature: 0,
    speculative_config: SPEC_CONFIG,
  };
}

// -- the figures ------------------------------------------------------------------------

// Paged blocks against one contiguous reservation of max_model_len per request, summed
// over every step of the run: the share of set-aside slots that held no token.
export function fragmentationFigure([run]) {
  const steps = run.events.filter((e) => e.kind === 'step_end');
  const sum = runTotals(steps);
  const paged = waste(sum.allocated_slots, sum.filled_slots);
  const contiguous = waste(sum.reserved_max_model_len, sum.tokens_held);
  return {value: {paged, contiguous},
          text: `${pct(paged)} of paged slots unused, against ${pct(contiguous)} of a `
            + 'contiguous max_model_len reservation (summed over the run\'s steps)'};
}

export function batchingFigure([staticRun, continuousRun]) {
  const s = figures(staticRun, 'static').steps;
  const c = figures(continuousRun, 'continuous').steps;
  return {value: {static: s, continuous: c},
          text: `${plural(c, 'step')} with continuous batching, ${plural(s, 'step')} static, for the same 8 requests`};
}

export function chunkedFigure([unchunked, chunked], bodies) {
  const u = runFigures(unchunked.events, longId(bodies[0])).stall;
  const c = runFigures(chunked.events, longId(bodies[1])).stall;
  const ms = (stall) => (stall ? stall.ms : 0);
  return {value: {unchunked: ms(u), chunked: ms(c)},
          text: `longest wait between two tokens of a decoding request: ${ms(c).toFixed(1)} ms `
            + `chunked (budget ${CHUNK_BUDGET}), ${ms(u).toFixed(1)} ms unchunked`};
}

export function prefixFigure([run]) {
  const chain = prefixChain(run.events);
  const hit = chain.lookup.hit_tokens;
  const total = chain.numTokens;
  return {value: {hit, total, computed: total - hit},
          text: `the second request computed ${total - hit} of its ${total} prompt tokens; `
            + `${hit} came from the cache (without it: all ${total})`};
}

export function speculativeFigure([run]) {
  const passes = run.events.filter((e) => e.kind === 'drafts_verified' && e.request_id === '0');
  const drafted = passes.reduce((n, e) => n + e.draft_token_ids.length, 0);
  const accepted = passes.reduce((n, e) => n + e.num_accepted, 0);
  const tokens = passes.reduce((n, e) => n + e.token_ids.length, 0);
  const perPass = passes.length ? accepted / passes.length : 0;
  return {value: {passes: passes.length, drafted, accepted, perPass},
          text: passes.length
            ? `${perPass.toFixed(2)} accepted drafts per verifying pass (${accepted} of ${drafted}, `
              + `${pct(accepted / drafted)}; ${(tokens / passes.length).toFixed(2)} tokens per pass)`
            : 'no pass verified any drafts in this run'};
}

// Each preemption (recompute) gives the victim's blocks back first: the blocks_freed
// event just before its preempted event.
export function preemptionFigure([run]) {
  const ev = run.events;
  let preemptions = 0;
  let freed = 0;
  ev.forEach((e, i) => {
    if (e.kind !== 'preempted') return;
    preemptions += 1;
    for (let j = i - 1; j >= 0 && ev[j].step === e.step; j--) {
      if (ev[j].kind === 'blocks_freed' && ev[j].request_id === e.request_id) {
        freed += ev[j].block_ids.length;
        break;
      }
    }
  });
  const finished = ev.filter((e) => e.kind === 'request_finished').length;
  return {value: {preemptions, freed, finished},
          text: `${plural(preemptions, 'preemption')} gave back ${plural(freed, 'block')} in a 14-block `
            + `pool, and all ${finished} requests still finished`};
}

// -- the rows ---------------------------------------------------------------------------

// `bodies` (may need the chat prompt: see speculativeBody) and `figure(responses, bodies)`
// for a measured row; `lessons` for every row.
export const ROWS = [
  {id: 'kv-cache', title: 'KV cache', lessons: ['why-kv-cache', 'kv-cache'],
   buys: 'Each new token costs one token of work instead of the whole sequence again; paid for in memory per token.'},
  {id: 'paged-attention', title: 'Paged attention', lessons: ['paged-attention', 'fragmentation'],
   buys: 'Memory handed out a block at a time, so almost none is held back for answers not yet written.',
   bodies: () => [{prompts: FRAGMENTATION_PROMPTS, block_size: 16, max_tokens: 24, num_blocks: 64,
                   enable_prefix_caching: false}],
   figure: fragmentationFigure},
  {id: 'continuous-batching', title: 'Continuous batching', lessons: ['batching-lab'],
   buys: 'A freed seat is filled on the next step, so fewer steps for the same work and shorter waits.',
   bodies: () => ['static', 'continuous'].map((mode) => labBody(PRESETS.balanced.rows, DEFAULT_SEATS, mode)),
   figure: batchingFigure},
  {id: 'chunked-prefill', title: 'Chunked prefill', lessons: ['chunked-prefill'],
   buys: 'A long prompt no longer freezes everyone else: decoding requests keep getting tokens while it is prefilled.',
   bodies: () => [runBody(CHUNKED, UNCHUNKED_BUDGET), runBody(CHUNKED, CHUNK_BUDGET)],
   figure: chunkedFigure},
  {id: 'prefix-caching', title: 'Prefix caching', lessons: ['prefix-caching'],
   buys: 'Requests that start alike skip computing the shared start: less prefill work and a sooner first token.',
   bodies: () => [{prompts: [`${PREFIX} Question: when do you open on Sundays?`,
                             `${PREFIX} Question: which bread is on sale today?`],
                   arrive_at_step: [0, 2], max_tokens: 6, block_size: 8, num_blocks: 48,
                   enable_prefix_caching: true}],
   figure: prefixFigure},
  {id: 'preemption', title: 'Preemption', lessons: ['preemption'],
   buys: 'A full pool slows requests down instead of failing them: a victim gives its blocks back and resumes later.',
   bodies: () => [{prompts: ['The quick brown fox jumps over the lazy dog and',
                             'In a small village by the sea there lived',
                             'Here is a list of prime numbers: 2, 3, 5,'],
                   num_blocks: 14, block_size: 4, max_tokens: 24, preemption_mode: 'recompute',
                   swap_blocks: 32, enable_prefix_caching: false}],
   figure: preemptionFigure},
  {id: 'parallel-sampling', title: 'Parallel sampling and beam search', lessons: ['parallel-sampling', 'beam-search'],
   buys: 'Many continuations of one prompt store the prompt once; a pruned beam frees its blocks at once.'},
  {id: 'speculative-decoding', title: 'Speculative decoding', lessons: ['speculative-decoding'],
   buys: 'Several tokens from one pass of the model when the guesses are good, with exactly the same output.',
   chat: SPEC_TEXT,
   bodies: (prompt) => [speculativeBody(prompt)],
   figure: speculativeFigure},
  {id: 'tensor-parallelism', title: 'Tensor parallelism', lessons: ['tensor-parallelism'],
   buys: 'A model too big or too slow for one device, split over several that compute every layer together.'},
  {id: 'pipeline-parallelism', title: 'Pipeline parallelism', lessons: ['pipeline-parallelism'],
   buys: 'Layers on several devices with one hand-over per step; more batches in flight, not a faster token.'},
  {id: 'data-parallelism', title: 'Data parallelism and routing', lessons: ['data-parallel'],
   buys: 'More requests served by more copies; a cache-aware router keeps shared prompts on the replica that has them.'},
  {id: 'expert-context-parallelism', title: 'Expert and context parallelism', lessons: ['expert-context-parallelism'],
   buys: 'Huge mixture-of-experts models and very long contexts spread over many devices (computed from configs here).'},
  {id: 'disaggregation', title: 'Disaggregated prefill/decode', lessons: ['disaggregation'],
   buys: 'Prefill and decode on servers of their own, so neither stalls the other, at the price of moving the K/V.'},
  {id: 'tuning', title: 'Throughput against latency', lessons: ['tuning-lab'],
   buys: 'No setting wins everything: the knobs trade tokens per second for time to first token and per token.'},
];

export const measured = (row) => typeof row.figure === 'function';

// The further reading: public work named in words (no links needed), each with what it adds.
export const READING = [
  ['Kwon et al., "Efficient Memory Management for Large Language Model Serving with PagedAttention" (SOSP 2023)',
   'the vLLM paper: block tables, sharing and preemption.'],
  ['Yu et al., "Orca: A Distributed Serving System for Transformer-Based Generative Models" (OSDI 2022)',
   'iteration-level scheduling, the idea behind continuous batching.'],
  ['Agrawal et al., "Taming Throughput-Latency Tradeoff in LLM Inference with Sarathi-Serve" (OSDI 2024)',
   'chunked prefills and stall-free batching.'],
  ['Leviathan et al., "Fast Inference from Transformers via Speculative Decoding" (ICML 2023), and Chen et al., "Accelerating Large Language Model Decoding with Speculative Sampling" (2023)',
   'the acceptance rule that keeps the output distribution.'],
  ['Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using Model Parallelism" (2019)',
   'the column- and row-parallel split.'],
  ['Zhong et al., "DistServe: Disaggregating Prefill and Decoding for Goodput-optimized Large Language Model Serving" (OSDI 2024)',
   'separate servers for the two phases.'],
  ['Zheng et al., "SGLang: Efficient Execution of Structured Language Model Programs" (2024)',
   'RadixAttention, a tree-shaped prefix cache, and cache-aware routing.'],
  ['Williams, Waterman and Patterson, "Roofline: An Insightful Visual Performance Model for Multicore Architectures" (CACM 2009)',
   'the roofline model.'],
  ['Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding" (2021), and Ainslie et al., "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints" (2023)',
   'RoPE and grouped-query attention.'],
];
