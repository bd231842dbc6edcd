// The glossary on every page: the first use of each glossary term in the page's prose
// becomes a link to its entry on the glossary page, and hovering or focusing it shows
// the definition in one shared tooltip (Escape hides it). The page chrome calls
// decorateGlossary once at load, on the static prose; a page that renders prose of its
// own calls it again once that is in place.
// Wrapping a word in a link keeps every element's textContent as it was: the
// definitions live in the tooltip, outside <main>.

import {TERMS, termById} from './glossary-terms.js';
import {compileTerms, firstUses, isProse, glossaryHref, tipPosition} from './logic/glossary.js';

export const TIP_ID = 'glossary-tip';
const matcher = compileTerms(TERMS);
let tip = null;
let current = null;  // the term whose definition shows
let hideTimer = 0;

// Marks the first use of each term in the prose of <main>. Called again (a page that
// rendered prose of its own), it starts over: the old marks go and the page's first
// uses are found afresh, so they stay the first in document order.
export function decorateGlossary(root = '') {
  const main = document.querySelector('main');
  if (!main) return;
  for (const old of main.querySelectorAll('a.gloss')) {
    const parent = old.parentNode;
    old.replaceWith(...old.childNodes);
    parent.normalize();
  }
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
  const nodes = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.data.trim() && isProse(n, main)) nodes.push(n);
  }
  const uses = firstUses(nodes.map((n) => n.data), matcher, new Set());
  nodes.forEach((node, i) => {
    // from the last use back, so the earlier offsets stay valid
    for (const use of [...uses[i]].reverse()) {
      const word = node.splitText(use.start);
      word.splitText(use.end - use.start);
      const link = document.createElement('a');
      link.className = 'gloss';
      link.href = glossaryHref(root, use.id);
      link.dataset.term = use.id;
      link.tabIndex = 0;
      link.setAttribute('aria-describedby', TIP_ID);
      word.replaceWith(link);
      link.append(word);
    }
  });
  hideGlossaryTip();
  listen();
}

function tipElement() {
  if (!tip) {
    tip = document.createElement('div');
    tip.id = TIP_ID;
    tip.className = 'gloss-tip';
    tip.setAttribute('role', 'tooltip');
    tip.hidden = true;
    tip.addEventListener('mouseenter', () => clearTimeout(hideTimer));
    tip.addEventListener('mouseleave', () => hideSoon());
    document.body.append(tip);
  }
  return tip;
}

function show(link) {
  const term = termById.get(link.dataset.term);
  if (!term) return;
  clearTimeout(hideTimer);
  const el = tipElement();
  el.replaceChildren();
  const name = document.createElement('strong');
  name.textContent = term.term;
  el.append(name, `: ${term.def}`);
  el.hidden = false;
  current = link;
  const r = link.getBoundingClientRect();
  const pos = tipPosition(r, {width: el.offsetWidth, height: el.offsetHeight},
    {width: document.documentElement.clientWidth, height: window.innerHeight,
     scrollX: window.scrollX, scrollY: window.scrollY});
  el.style.top = `${pos.top}px`;
  el.style.left = `${pos.left}px`;
}

export function hideGlossaryTip() {
  clearTimeout(hideTimer);
  if (tip) tip.hidden = true;
  current = null;
}

// the pointer may move from the term onto the tooltip without losing it
function hideSoon() {
  clearTimeout(hideTimer);
  hideTimer = setTimeout(hideGlossaryTip, 200);
}

let listening = false;
function listen() {
  if (listening) return;
  listening = true;
  const termAt = (event) => event.target instanceof Element ? event.target.closest('a.gloss') : null;
  document.addEventListener('mouseover', (event) => {
    const link = termAt(event);
    if (link) show(link);
  });
  document.addEventListener('mouseout', (event) => {
    const link = termAt(event);
    if (link && link === current && !link.contains(event.relatedTarget)) hideSoon();
  });
  document.addEventListener('focusin', (event) => {
    const link = termAt(event);
    if (link) show(link);
  });
  document.addEventListener('focusout', (event) => {
    if (termAt(event) === current) hideGlossaryTip();
  });
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && tip && !tip.hidden) hideGlossaryTip();
  });
  window.addEventListener('resize', () => { if (current) show(current); });
}
