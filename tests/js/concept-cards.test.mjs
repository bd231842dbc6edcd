import {test} from 'node:test';
import assert from 'node:assert/strict';
import {CARDS, toggled, buttonText} from '../../kvscope/scope/static/js/logic/concept-cards.js';

test('one card per idea, each with a definition, an analogy and a lesson', () => {
  const ids = CARDS.map((c) => c.id);
  for (const id of ['paged-attention', 'continuous-batching', 'prefix-caching', 'speculative-decoding',
                    'chunked-prefill', 'tensor-parallelism', 'disaggregation', 'kv-cache', 'preemption',
                    'parallel-sampling', 'beam-search', 'pipeline-parallelism', 'data-parallelism',
                    'expert-parallelism']) {
    assert.ok(ids.includes(id), id);
  }
  assert.equal(new Set(ids).size, ids.length);
  for (const c of CARDS) {
    assert.ok(c.def.length > 60 && c.analogy.length > 60, c.id);
    assert.notEqual(c.def, c.analogy);
    assert.match(c.lesson, /^[a-z-]+$/);
  }
});

test('pressing a card opens it, pressing again closes it, others stay as they are', () => {
  let open = new Set();
  open = toggled(open, 'kv-cache');
  open = toggled(open, 'beam-search');
  assert.deepEqual([...open], ['kv-cache', 'beam-search']);
  const before = open;
  open = toggled(open, 'kv-cache');
  assert.deepEqual([...open], ['beam-search']);
  assert.deepEqual([...before], ['kv-cache', 'beam-search'], 'a new set each time');
  assert.equal(buttonText(true), 'Hide the analogy');
  assert.equal(buttonText(false), 'Show the analogy');
});
