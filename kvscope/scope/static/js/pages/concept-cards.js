// The concept cards: a definition, an analogy behind a real button (aria-expanded), and
// the lesson's link. The cards' content is ../logic/concept-cards.js.

import {LESSONS} from '../chrome.js';
import {$, h, replace} from '../dom.js';
import {showError} from '../api.js';
import {decorateGlossary} from '../glossary.js';
import {CARDS, toggled, buttonText} from '../logic/concept-cards.js';

let open = new Set();

try {
  const titles = new Map(LESSONS.map((l) => [l.page, l.title]));
  replace($('#cards'), CARDS.map((c) => {
    const analogyId = `analogy-${c.id}`;
    const button = h('button', {type: 'button', 'aria-expanded': 'false', 'aria-controls': analogyId,
                                'data-card': c.id}, buttonText(false));
    const analogy = h('div', {class: 'analogy', id: analogyId, hidden: true, 'data-glossary': ''},
      h('p', {}, c.analogy));
    button.addEventListener('click', () => {
      open = toggled(open, c.id);
      const isOpen = open.has(c.id);
      button.setAttribute('aria-expanded', String(isOpen));
      button.textContent = buttonText(isOpen);
      analogy.hidden = !isOpen;
    });
    return h('li', {class: 'concept-card', 'data-card': c.id},
      h('h2', {}, c.title),
      h('p', {}, c.def),
      button,
      analogy,
      h('p', {class: 'note'}, 'See it on a real run: ',
        h('a', {href: `${c.lesson}.html`, class: 'lesson-link'}, titles.get(c.lesson) ?? c.lesson)));
  }));
  decorateGlossary('../');
} catch (err) {
  showError($('#error'), 'Drawing the cards', err);
}
