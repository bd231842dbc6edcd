import {test} from 'node:test';
import assert from 'node:assert/strict';
import {TERMS, termById} from '../../kvscope/scope/static/js/glossary-terms.js';
import {compileTerms, termUses, firstUses, isProse, skipsGlossary, glossaryHref, tipPosition}
  from '../../kvscope/scope/static/js/logic/glossary.js';

const matcher = compileTerms(TERMS);
const ids = (uses) => uses.map((u) => u.id);
const words = (text, uses) => uses.map((u) => text.slice(u.start, u.end));

// -- the data -----------------------------------------------------------------------------

test('every term has an id, a definition of a sentence or two and a lesson', () => {
  const seen = new Set();
  for (const term of TERMS) {
    assert.match(term.id, /^[a-z0-9-]+$/, term.id);
    assert.ok(!seen.has(term.id), `duplicate id ${term.id}`);
    seen.add(term.id);
    assert.ok(term.def.length > 20 && term.def.length < 260, `${term.id}: ${term.def.length} characters`);
    assert.ok(term.def.split(/[.!?](\s|$)/).filter((s) => s && s.trim()).length <= 3, term.id);
    assert.match(term.lesson, /^[a-z-]+$/);
    assert.equal(term.forms[0], term.term);
  }
  assert.equal(termById.get('kv-cache').term, 'KV cache');
});

test('no form stands for two terms', () => {
  const owner = new Map();
  for (const term of TERMS) {
    for (const form of term.forms) {
      const key = form.toLowerCase();
      assert.ok(!owner.has(key) || owner.get(key) === term.id,
        `"${form}" belongs to ${owner.get(key)} and ${term.id}`);
      owner.set(key, term.id);
    }
  }
});

test('the terms the brief asks for are all there', () => {
  const want = ['block', 'block-table', 'kv-cache', 'prefill', 'decode', 'chunked-prefill',
    'token-budget', 'continuous-batching', 'static-batching', 'preemption', 'recompute', 'swap',
    'prefix-caching', 'copy-on-write', 'refcount', 'beam-search', 'speculative-decoding', 'draft',
    'acceptance-rate', 'tensor-parallelism', 'pipeline-parallelism', 'data-parallelism',
    'expert-parallelism', 'all-reduce', 'ttft', 'tpot', 'itl', 'throughput', 'roofline', 'rope',
    'gqa', 'logits'];
  for (const id of want) assert.ok(termById.has(id), id);
});

// -- matching -----------------------------------------------------------------------------

test('whole words only: no match inside a longer word or a hyphenated one', () => {
  assert.deepEqual(termUses('blocked blockade unblock', matcher), []);
  assert.deepEqual(termUses('the prefill-decode page', matcher), []);
  assert.deepEqual(ids(termUses('a block, then (blocks).', matcher)), ['block', 'block']);
  assert.deepEqual(ids(termUses('block_size', matcher)), []);
});

test('the longest form wins: a term inside a longer term does not count', () => {
  const text = 'Each block table maps a block; chunked prefill splits a prefill.';
  const uses = termUses(text, matcher);
  assert.deepEqual(ids(uses), ['block-table', 'block', 'chunked-prefill', 'prefill']);
  assert.deepEqual(words(text, uses), ['block table', 'block', 'chunked prefill', 'prefill']);
  assert.deepEqual(ids(termUses('speculative decoding then decoding', matcher)),
    ['speculative-decoding', 'decode']);
});

test('plurals and aliases stand for their term, in any case; acronyms keep their case', () => {
  const text = 'Prefills and Refcounts; GQA, grouped-query attention, TTFT and Time to First Token.';
  assert.deepEqual(ids(termUses(text, matcher)), ['prefill', 'refcount', 'gqa', 'gqa', 'ttft', 'ttft']);
  assert.deepEqual(ids(termUses('kv cache and gqa and ttft', matcher)), []);
  assert.deepEqual(ids(termUses('the KV cache, copy-on-write, all-reduces', matcher)),
    ['kv-cache', 'copy-on-write', 'all-reduce']);
  assert.deepEqual(ids(termUses('FLOP/s and FLOPs', matcher)), ['flop', 'flop']);
});

test('a wrong-case acronym does not hide a shorter term at the same place', () => {
  const m = compileTerms([{id: 'ab', forms: ['AB CD']}, {id: 'a', forms: ['ab']}]);
  assert.deepEqual(ids(termUses('ab cd', m)), ['a']);
  assert.deepEqual(ids(termUses('AB CD', m)), ['ab']);
});

test('first uses across a page: each term once, the earliest, in document order', () => {
  const texts = ['A block holds tokens.', 'Every block table lists blocks ', 'and the KV cache holds a block.'];
  const uses = firstUses(texts, matcher);
  assert.deepEqual(uses.map(ids), [['block', 'token'], ['block-table'], ['kv-cache']]);
  assert.deepEqual(words(texts[0], uses[0]), ['block', 'tokens']);
  // terms already marked on the page are not marked again
  const seen = new Set(['kv-cache']);
  assert.deepEqual(firstUses(['the KV cache and a KV block'], matcher, seen).map(ids), [['block']]);
  assert.ok(seen.has('block'));
});

// -- which text is prose ------------------------------------------------------------------

function el(tagName, props = {}, parent = null) {
  const attrs = props.attrs ?? {};
  return {
    tagName, id: props.id ?? '', parentElement: parent,
    classList: props.classes ?? [],
    hasAttribute: (name) => name in attrs || (name === 'id' && Boolean(props.id)),
    getAttribute: (name) => attrs[name] ?? null,
  };
}
const text = (parent) => ({nodeType: 3, parentElement: parent});

test('prose is text in a p, li, dd or figcaption below main', () => {
  const main = el('MAIN', {id: 'main'});
  const div = el('DIV', {classes: ['prose']}, main);
  const p = el('P', {}, div);
  const em = el('EM', {}, p);
  assert.equal(isProse(text(p), main), true);
  assert.equal(isProse(text(em), main), true);
  assert.equal(isProse(text(div), main), false, 'a bare div is not prose');
  for (const tag of ['LI', 'DD', 'FIGCAPTION']) assert.equal(isProse(text(el(tag, {}, main)), main), true);
  const elsewhere = el('P', {}, el('FOOTER'));
  assert.equal(isProse(text(elsewhere), main), false, 'outside main');
});

test('headings, controls, code, tables, svg, links and filled elements are skipped', () => {
  const main = el('MAIN', {id: 'main'});
  for (const tag of ['H2', 'BUTTON', 'LABEL', 'CODE', 'PRE', 'TABLE', 'svg', 'A', 'OUTPUT']) {
    const inner = el('SPAN', {}, el(tag, {}, el('P', {}, main)));
    assert.equal(isProse(text(inner), main), false, tag);
    assert.equal(isProse(text(el('LI', {}, el(tag, {}, main))), main), false, `li in ${tag}`);
  }
  // an element with an id is the page script's to fill: #readout, #error, a form
  assert.equal(isProse(text(el('P', {id: 'status'}, main)), main), false);
  assert.equal(isProse(text(el('P', {}, el('FORM', {id: 'lab'}, main))), main), false);
  // ...unless it opts in
  assert.equal(isProse(text(el('DD', {}, el('DL', {id: 'terms', attrs: {'data-glossary': ''}}, main))), main), true);
  // live regions, roles, hidden parts, legends, readouts, terms already marked
  assert.equal(isProse(text(el('P', {attrs: {'aria-live': 'polite'}}, main)), main), false);
  assert.equal(isProse(text(el('P', {attrs: {role: 'alert'}}, main)), main), false);
  assert.equal(isProse(text(el('P', {attrs: {hidden: ''}}, main)), main), false);
  assert.equal(isProse(text(el('P', {attrs: {'aria-hidden': 'true'}}, main)), main), false);
  assert.equal(isProse(text(el('LI', {}, el('UL', {classes: ['legend']}, main))), main), false);
  assert.equal(isProse(text(el('SPAN', {classes: ['no-gloss']}, el('P', {}, main))), main), false);
  assert.equal(skipsGlossary(el('A', {classes: ['gloss']})), true);
  assert.equal(skipsGlossary(el('SECTION', {attrs: {'aria-labelledby': 'x'}})), false);
});

// -- links and the tooltip's place --------------------------------------------------------

test('links go to the glossary page anchor from any page', () => {
  assert.equal(glossaryHref('', 'kv-cache'), 'lessons/glossary.html#g-kv-cache');
  assert.equal(glossaryHref('../', 'ttft'), '../lessons/glossary.html#g-ttft');
});

test('the tooltip goes below the term, above when there is no room, and inside the width', () => {
  const view = {width: 375, height: 800, scrollX: 0, scrollY: 1000};
  const tip = {width: 300, height: 80};
  const below = tipPosition({top: 100, bottom: 120, left: 200}, tip, view);
  assert.deepEqual(below, {top: 1126, left: 67, below: true});
  const above = tipPosition({top: 760, bottom: 780, left: 4}, tip, view);
  assert.deepEqual(above, {top: 1000 + 760 - 6 - 80, left: 8, below: false});
  // wider than the screen: pinned to the margin
  assert.equal(tipPosition({top: 0, bottom: 10, left: 50}, {width: 400, height: 10}, view).left, 8);
});

test('the glossary page: alphabetical by name, other forms without the plain plurals', async () => {
  const {alphabetical, otherForms} = await import('../../kvscope/scope/static/js/logic/glossary-page.js');
  const sorted = alphabetical([{term: 'TTFT'}, {term: 'block'}, {term: 'all-reduce'}, {term: 'Beam'}]);
  assert.deepEqual(sorted.map((t) => t.term), ['all-reduce', 'Beam', 'block', 'TTFT']);
  assert.deepEqual(otherForms(termById.get('block')), ['physical block', 'physical blocks', 'KV block', 'KV blocks']);
  assert.deepEqual(otherForms(termById.get('prefix-caching')), ['prefix cache', 'prefix-cache']);
});
