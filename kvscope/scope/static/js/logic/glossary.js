// Finding glossary terms in a page's prose, free of the real DOM: which text counts as
// prose (a rule over an element's tag, id and attributes, so a fake element tree tests
// it), and where in a piece of text the first use of each term lies. The decoration
// itself is ../glossary.js.

// Text inside one of these is prose...
export const PROSE_TAGS = new Set(['P', 'LI', 'DD', 'FIGCAPTION']);
// ...unless it also sits inside one of these: headings, controls, code, figures drawn by
// script, tables, links (no link inside a link), the page chrome.
export const SKIP_TAGS = new Set(['H1', 'H2', 'H3', 'H4', 'H5', 'H6', 'BUTTON', 'LABEL', 'INPUT',
  'SELECT', 'OPTION', 'TEXTAREA', 'OUTPUT', 'CODE', 'PRE', 'KBD', 'SAMP', 'VAR', 'SVG', 'TABLE',
  'A', 'SUMMARY', 'SCRIPT', 'STYLE', 'NOSCRIPT', 'NAV', 'HEADER', 'FOOTER', 'TEMPLATE']);
// Classes whose text is not prose: picture legends, readouts, tags, terms already marked.
export const SKIP_CLASSES = ['legend', 'readout', 'tag', 'gloss', 'no-gloss'];

// Whether element `el` keeps the glossary out of everything inside it. An element with
// an id is one a page's script may fill or rewrite (#readout, #error, a form), so it is
// left alone unless it opts in with data-glossary; so is a live region or any element
// with a role.
export function skipsGlossary(el) {
  if (SKIP_TAGS.has(String(el.tagName).toUpperCase())) return true;
  if (el.id && !el.hasAttribute('data-glossary')) return true;
  if (el.hasAttribute('role') || el.hasAttribute('aria-live') || el.hasAttribute('hidden')) return true;
  if (el.getAttribute('aria-hidden') === 'true') return true;
  const classes = el.classList ? [...el.classList] : String(el.className ?? '').split(/\s+/);
  return SKIP_CLASSES.some((c) => classes.includes(c));
}

// Whether a text node is prose the glossary may mark: inside a p, li, dd or figcaption
// below `stop` (the page's <main>), with nothing between it and `stop` that skips.
export function isProse(textNode, stop) {
  let prose = false;
  for (let el = textNode.parentElement; el; el = el.parentElement) {
    if (el === stop) return prose;
    if (skipsGlossary(el)) return false;
    if (PROSE_TAGS.has(String(el.tagName).toUpperCase())) prose = true;
  }
  return false;  // not below `stop` at all
}

const escape = (s) => s.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');
// A form with two capitals (KV cache, TTFT, RoPE) is matched with its case as written;
// any other form in any case ("Prefill" starts a sentence).
const caseSensitive = (form) => (form.match(/[A-Z]/g) ?? []).length >= 2;

// One matcher for a list of terms ({id, forms}): a regex trying the longest forms first,
// so "block table" wins over "block", and what each matched text stands for.
export function compileTerms(terms) {
  const forms = new Map();  // lower-case form -> [{id, form, sensitive}]
  for (const term of terms) {
    for (const form of term.forms) {
      const key = form.toLowerCase();
      if (!forms.has(key)) forms.set(key, []);
      forms.get(key).push({id: term.id, form, sensitive: caseSensitive(form)});
    }
  }
  const keys = [...forms.keys()].sort((a, b) => b.length - a.length || (a < b ? -1 : 1));
  // whole words: no letter, digit, underscore or hyphen either side
  const source = `(?<![\\w-])(?:${keys.map(escape).join('|')})(?![\\w-])`;
  return {source, forms, keys};
}

// Which term the text `found` (a match of the matcher) stands for, or null when it only
// matches a case-sensitive form in the wrong case.
export function termOf(matcher, found) {
  const options = matcher.forms.get(found.toLowerCase()) ?? [];
  const hit = options.find((o) => !o.sensitive || o.form === found);
  return hit ? hit.id : null;
}

// Every use of a term in `text`, left to right, longest form first: [{start, end, id}].
// A use inside a longer term's use does not count ("block" inside "block table").
export function termUses(text, matcher) {
  const re = new RegExp(matcher.source, 'gi');
  const uses = [];
  let m;
  while ((m = re.exec(text)) !== null) {
    let found = m[0];
    let id = termOf(matcher, found);
    if (id === null) {  // a wrong-case acronym: a shorter form may still start here
      found = shorterForm(text, m.index, found.length, matcher);
      id = found === null ? null : termOf(matcher, found);
      re.lastIndex = m.index + (found === null ? 1 : found.length);
      if (id === null) continue;
    }
    uses.push({start: m.index, end: m.index + found.length, id});
  }
  return uses;
}

// The longest form shorter than `length` that matches whole-word at `at`, as written there.
function shorterForm(text, at, length, matcher) {
  const wordChar = (c) => c !== undefined && /[\w-]/.test(c);
  for (const key of matcher.keys) {
    if (key.length >= length) continue;
    const here = text.slice(at, at + key.length);
    if (here.toLowerCase() === key && !wordChar(text[at + key.length]) && termOf(matcher, here) !== null) {
      return here;
    }
  }
  return null;
}

// The uses to mark in a run of texts in document order: the first use of each term not
// in `seen` (which this adds to). Returns one list of {start, end, id} per text.
export function firstUses(texts, matcher, seen = new Set()) {
  return texts.map((text) => termUses(text, matcher).filter((use) => {
    if (seen.has(use.id)) return false;
    seen.add(use.id);
    return true;
  }));
}

// The glossary page's anchor of a term, and the link to it from a page at `root`.
export const anchorOf = (id) => `g-${id}`;
export const glossaryHref = (root, id) => `${root}lessons/glossary.html#${anchorOf(id)}`;

// Where the tooltip goes: under the term, or above it when there is no room below;
// kept inside the viewport horizontally. `rect` is the term's client rect, `tip` the
// tooltip's size, `view` the viewport's size and scroll offsets.
export function tipPosition(rect, tip, view, gap = 6, margin = 8) {
  const below = rect.bottom + gap + tip.height <= view.height || rect.top < tip.height + gap;
  const top = below ? rect.bottom + gap : rect.top - gap - tip.height;
  const maxLeft = Math.max(margin, view.width - tip.width - margin);
  const left = Math.min(Math.max(rect.left, margin), maxLeft);
  return {top: top + view.scrollY, left: left + view.scrollX, below};
}
