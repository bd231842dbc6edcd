// Page chrome shared by every page: the <head> lines every page needs, a skip link,
// the header with navigation, and the footer. Importing this module adds them;
// <body data-page data-root> says which page this is and the relative path back to
// the site root. An HTML file carries only what a static file must have (see
// completeHead).

import {h} from './dom.js';
import {decorateGlossary} from './glossary.js';

export const LESSONS = [
  {page: 'tokens', title: 'Tokens',
   blurb: 'Type text or a chat message and see the pieces the real tokenizer cuts it into, and what those tokens will cost in the KV cache.'},
  {page: 'embeddings', title: 'Embeddings',
   blurb: 'Each token id looks up one row of the embedding matrix: the rows of your tokens, their norms, and their nearest neighbours.'},
  {page: 'attention-heads', title: 'Attention, head by head',
   blurb: 'The real attention weights of one layer and head over your prompt, and which query heads share a KV head.'},
  {page: 'rope', title: 'Positions and RoPE',
   blurb: 'Rotary position embedding: the angle of every dimension pair at every position, and how a real q·k score moves with distance.'},
  {page: 'transformer-block', title: 'The MLP and the block',
   blurb: 'One token through one decoder layer, with the real vector norms at each step, and the residual stream through every layer.'},
  {page: 'sampling', title: 'Logits and sampling',
   blurb: 'The next-token distribution from the real logits, filtered by temperature, top-k, top-p and min-p in the engine\'s own sampler.'},
  {page: 'prefill-decode', title: 'Prefill vs decode',
   blurb: 'Measured step times of a real run, placed on this machine\'s roofline: prefill is bound by compute, decode by memory.'},
  {page: 'chunked-prefill', title: 'Chunked prefill',
   blurb: 'A long prompt arrives while others decode: run it in one step and then in chunks, and measure the wait it puts between their tokens.'},
  {page: 'why-kv-cache', title: 'Why cache K and V',
   blurb: 'The same generation with the KV cache and with everything recomputed at every token, timed as the sequence grows.'},
  {page: 'kv-cache', title: 'The KV cache',
   blurb: 'Why keys and values are kept, what one token costs in bytes, and how the cache grows as a request decodes.'},
  {page: 'paged-attention', title: 'Paged attention',
   blurb: 'Fixed-size physical blocks, one block table per request, many requests interleaved in one pool.'},
  {page: 'attention-math', title: 'Block-wise attention math',
   blurb: 'Scores block by block, one softmax over all of them, then the weighted sum of values: same answer as contiguous attention.'},
  {page: 'fragmentation', title: 'Memory fragmentation',
   blurb: 'Slots allocated versus slots holding tokens: paged blocks against contiguous reservations, measured each step.'},
  {page: 'prefix-caching', title: 'Prefix caching',
   blurb: 'Full blocks found by a chain of hashes, so a second request with the same prefix skips recomputing it.'},
  {page: 'preemption', title: 'Preemption: recompute or swap',
   blurb: 'When the pool runs out, a victim gives its blocks back, then either recomputes them or copies them back in.'},
  {page: 'parallel-sampling', title: 'Parallel sampling',
   blurb: 'Several completions of one prompt sharing its blocks by refcount, with copy-on-write.'},
  {page: 'beam-search', title: 'Beam search',
   blurb: 'A tree of beams sharing blocks; pruning a beam frees its blocks at once.'},
  {page: 'speculative-decoding', title: 'Speculative decoding',
   blurb: 'A cheap proposer drafts k tokens, the target checks them all in one pass, and the KV slots of rejected drafts go back.'},
  {page: 'tensor-parallelism', title: 'Tensor parallelism',
   blurb: 'Each layer split over two ranks: column-parallel and row-parallel weights, one all-reduce per block, the KV cache split by head.'},
  {page: 'pipeline-parallelism', title: 'Pipeline parallelism',
   blurb: 'The layers in two stages, two worker processes: when each stage computed each batch, two batches in flight, and the bubble measured from the run.'},
  {page: 'data-parallel', title: 'Data parallelism and routing',
   blurb: 'Replicas each keep their own prefix cache: where round_robin and cache_aware send a shared-prefix workload, and what each replica finds cached.'},
  {page: 'disaggregation', title: 'Disaggregated prefill/decode',
   blurb: 'One request prefilled on one engine and decoded on another: the K/V moved between them, measured in bytes and milliseconds, and the same tokens as one engine.'},
  {page: 'expert-context-parallelism', title: 'Expert and context parallelism',
   blurb: 'Computed from published MoE configs, not run: experts spread over ranks with all-to-all, and one long sequence split over ranks with ring attention.'},
  {page: 'batching-lab', title: 'Batching Lab: static vs continuous',
   blurb: 'One workload run twice on the server, by a static batcher and with continuous batching: every request at every step, and the steps, latencies and seat use measured side by side.'},
  {page: 'tuning-lab', title: 'Tuning Lab: throughput vs latency',
   blurb: 'Pick max_num_seqs, the token budget, KV memory, prefix caching, speculation and the request rate; measure the setting live and see it land among a recorded sweep of TTFT, TPOT and tokens/s.'},
  {page: 'gpu-memory', title: 'The GPU memory hierarchy',
   blurb: 'Registers, shared memory, L2, HBM and beyond from the H100\'s published spec, beside this machine\'s caches and measured bandwidth, and where the weights and KV cache of the bundled model and of a 70B model would sit.'},
  {page: 'cuda-graphs', title: 'CUDA graphs and launch overhead',
   blurb: 'One decode workload through the Python layer loop and through the decode stack (all layers in one call): measured step times, kernel calls counted, and what a graph replay would remove on a GPU, computed.'},
];

// Lessons waiting for an engine feature (the home page lists them; none right now).
export const COMING = [];

// The pages that tie the lessons together (a guided tour, concept cards, the glossary,
// a request's lifecycle, the recap...): in the navigation after the live monitor, and
// on the home page in their own list. Same shape as LESSONS; files in lessons/.
export const GUIDES = [
  {page: 'glossary', title: 'Glossary',
   blurb: 'Every term the pages use, defined once in a sentence or two, each with the lesson that teaches it. On every page, hover or focus a dotted term to read its entry.'},
  {page: 'concept-cards', title: 'Concept cards',
   blurb: 'One card per idea, from the KV cache to disaggregated serving: a short definition, an everyday analogy behind a button, and the lesson that shows it on a real run.'},
  {page: 'recap', title: 'Recap and further reading',
   blurb: 'What each technique buys, with a figure measured on this server at the press of a button, and where to read more.'},
  {page: 'tour', title: 'The tour: seven ideas',
   blurb: 'Paged attention, continuous batching, prefix caching, speculative decoding, chunked prefill, tensor parallelism and disaggregation: one stop each, two sentences and a picture from a real run on this server.'},
  {page: 'request-lifecycle', title: 'The life of a request',
   blurb: 'One request followed through every event the engine reports about it: arrival, prefix-cache hit, blocks, prefill chunks, drafts, a preemption and its return, the finish and the blocks given back.'},
];

// The page stays transparent until the stylesheet has loaded, so nobody sees it
// unstyled (opacity, not visibility: a hidden element could not take the focus).
function completeHead(root) {
  const head = document.head;
  const missing = (selector) => !head.querySelector(selector);
  if (missing('meta[name="viewport"]')) {
    head.append(h('meta', {name: 'viewport', content: 'width=device-width, initial-scale=1'}));
  }
  if (missing('link[rel="icon"]')) head.append(h('link', {rel: 'icon', href: 'data:,'}));
  if (missing('link[rel="stylesheet"]')) {
    const page = document.documentElement.style;
    const reveal = () => { page.opacity = ''; };
    page.opacity = '0';
    head.append(h('link', {rel: 'stylesheet', href: `${root}css/scope.css`,
                           onload: reveal, onerror: reveal}));
  }
}

function mount() {
  const body = document.body;
  const root = body.dataset.root ?? '';
  const current = body.dataset.page ?? '';
  completeHead(root);
  const link = (page, text) => h('li', {},
    h('a', {href: `${root}${page === 'index' ? 'index.html' : page === 'monitor' ? 'monitor.html'
      : `lessons/${page}.html`}`, 'aria-current': page === current ? 'page' : null}, text));
  const header = h('header', {class: 'site-header'},
    h('a', {class: 'brand', href: `${root}index.html`}, 'kvscope'),
    h('nav', {class: 'site-nav', 'aria-label': 'Scope pages'},
      h('ul', {},
        link('index', 'Home'),
        link('monitor', 'Live monitor'),
        GUIDES.map((g) => link(g.page, g.title)),
        LESSONS.map((l) => link(l.page, l.title)))));
  const skip = h('a', {class: 'skip-link', href: '#main'}, 'Skip to content');
  const footer = h('footer', {class: 'site-footer'},
    'Every block, token and timing on these pages comes from events of a real kvscope engine run ',
    'on the loaded model. Numbers computed from a model\'s published config, not measured, are labelled so.');
  body.prepend(skip, header);
  body.append(footer);
  decorateGlossary(root);
}

mount();
