// The concept cards: one per idea, with a definition, an everyday analogy (shown on
// request) and the lesson that shows the idea on a real run. In our own words. No DOM here.

const card = (id, title, lesson, def, analogy) => ({id, title, lesson, def, analogy});

export const CARDS = [
  card('kv-cache', 'KV cache', 'kv-cache',
    'Attention needs the keys and values of every earlier token at every step. The engine keeps them '
    + 'once computed, so a new token only computes its own, at the price of memory for each token held.',
    'A court stenographer\'s transcript: when a lawyer asks about something said an hour ago, the '
    + 'clerk reads it back from the record instead of asking every witness to say it all again.'),
  card('paged-attention', 'Paged attention', 'paged-attention',
    'The KV cache is cut into small fixed-size blocks handed out one at a time; each request\'s block '
    + 'table says where its tokens sit, so no memory is held back for words not yet written.',
    'A coat check with numbered hooks: your coats go on whichever hooks are free, and your ticket '
    + 'lists the hook numbers. Nobody reserves a whole rack in case they come back with ten coats.'),
  card('continuous-batching', 'Continuous batching', 'batching-lab',
    'The batch is chosen again at every step: a finished request leaves at once and a waiting one '
    + 'takes its seat on the next step, instead of the whole group running to its slowest member.',
    'A chairlift that never stops: whenever an empty chair swings round, the next skier in the queue '
    + 'sits down. Nobody waits for a full group to assemble, and no chair goes up empty while people queue.'),
  card('prefix-caching', 'Prefix caching', 'prefix-caching',
    'Full blocks of prompts already computed are kept under a hash of their contents and of '
    + 'everything before them; a request that starts the same way reuses them instead of computing them.',
    'A print shop that keeps the plates of a popular form: when a customer wants the same first pages '
    + 'with a different last page, only the last page is set in type.'),
  card('chunked-prefill', 'Chunked prefill', 'chunked-prefill',
    'A long prompt is split into chunks that fit each step\'s token budget, so the requests already '
    + 'decoding keep getting a token every step instead of waiting for the whole prompt.',
    'A cashier with a customer\'s overflowing trolley who lets the people holding one item through '
    + 'between every few scans: the big shop takes as long as before, but nobody else stands still.'),
  card('speculative-decoding', 'Speculative decoding', 'speculative-decoding',
    'A cheap proposer guesses the next few tokens; the real model checks them all in one pass and '
    + 'keeps the ones it would have picked itself, so the output is the same, sooner when the guesses are good.',
    'Your phone\'s keyboard suggests the next three words; one glance tells you the first two are what '
    + 'you meant, you take them, and you type the third yourself.'),
  card('preemption', 'Preemption: recompute or swap', 'preemption',
    'When the pool runs out of blocks, one running request gives its blocks back so the others can go '
    + 'on; later it either recomputes its keys and values or copies them back from host memory.',
    'A full reading room where the latest arrival gives up their desk: they either box their notes and '
    + 'leave them at the front desk (swap), or throw them away and write them again from the books later (recompute).'),
  card('parallel-sampling', 'Parallel sampling', 'parallel-sampling',
    'Several completions of one prompt share the prompt\'s blocks by reference count; a shared block '
    + 'is copied only when one of them has to write into it (copy-on-write).',
    'Several authors continuing the same first chapter: they all read one shared copy, and an author '
    + 'photocopies a page only at the moment they want to scribble on it.'),
  card('beam-search', 'Beam search', 'beam-search',
    'The search keeps the few most likely partial answers at every step; beams that grew from one '
    + 'parent share its blocks, and a beam dropped from the race frees its blocks at once.',
    'A search party at every fork of a trail sends people down only the most promising few paths, '
    + 'and calls back those on dead ends, who hand their gear back at once.'),
  card('tensor-parallelism', 'Tensor parallelism', 'tensor-parallelism',
    'Every layer\'s weight matrices are split over several devices; each computes its slice for every '
    + 'token, and an all-reduce adds the slices up twice per layer.',
    'Four accountants each add up a quarter of the columns on the same ledger page, then call out '
    + 'their subtotals so that everyone has the page total before they turn to the next page.'),
  card('pipeline-parallelism', 'Pipeline parallelism', 'pipeline-parallelism',
    'The layers are split by depth into stages on different devices; each stage passes its output to '
    + 'the next, and several batches in flight keep the stages busy together.',
    'A car wash tunnel: soap, brushes, rinse and dryer each work on a different car at the same time. '
    + 'One car comes out no sooner, but many more cars come out per hour.'),
  card('data-parallelism', 'Data parallelism', 'data-parallel',
    'Several complete copies of the model serve different requests side by side; a router in front '
    + 'chooses the copy, ideally the one whose prefix cache already holds the prompt\'s start.',
    'Opening more checkout lanes, each a full till with its own cashier, and a greeter at the door who '
    + 'sends regulars to the lane whose cashier already knows their order.'),
  card('expert-parallelism', 'Expert parallelism', 'expert-context-parallelism',
    'In a mixture-of-experts model each token uses only a few of many expert MLPs; the experts are '
    + 'spread over devices, and the tokens travel to their experts and back.',
    'A clinic where the front desk sends each patient to the two specialists who fit best; the '
    + 'specialists work in different wings, so the patients walk to them and back.'),
  card('disaggregation', 'Disaggregated prefill/decode', 'disaggregation',
    'Prefill and decode run on separate servers: one computes the prompt\'s keys and values and '
    + 'hands them over, the other generates the answer, so neither phase stalls the other.',
    'A newsroom where researchers assemble the background file and pass it to the reporter who files '
    + 'the quick updates; the hand-over takes a moment, but the reporter never stops to do research.'),
];

// The set of open cards after the one with `id` was pressed.
export function toggled(open, id) {
  const next = new Set(open);
  if (next.has(id)) next.delete(id);
  else next.add(id);
  return next;
}

export const buttonText = (isOpen) => (isOpen ? 'Hide the analogy' : 'Show the analogy');
