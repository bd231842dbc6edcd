// The glossary page: every term of ../glossary-terms.js, in alphabetical order, with its
// other forms and the lesson that teaches it; then the glossary's own marks on the
// definitions (see ../glossary.js).

import {LESSONS, GUIDES} from '../chrome.js';
import {$, h, replace} from '../dom.js';
import {showError} from '../api.js';
import {TERMS} from '../glossary-terms.js';
import {decorateGlossary} from '../glossary.js';
import {anchorOf} from '../logic/glossary.js';
import {alphabetical, otherForms} from '../logic/glossary-page.js';

try {
  const titles = new Map([...LESSONS, ...GUIDES].map((l) => [l.page, l.title]));
  const terms = alphabetical(TERMS);
  replace($('#index'), terms.map((t) => h('li', {}, h('a', {href: `#${anchorOf(t.id)}`}, t.term))));
  replace($('#terms'), terms.flatMap((t) => {
    const also = otherForms(t);
    return [
      h('dt', {id: anchorOf(t.id)}, t.term),
      h('dd', {},
        h('p', {}, t.def),
        also.length ? h('p', {class: 'also no-gloss'}, `Also written: ${also.join(', ')}.`) : null,
        h('p', {class: 'taught'}, 'Shown in: ',
          h('a', {href: `${t.lesson}.html`}, titles.get(t.lesson) ?? t.lesson))),
    ];
  }));
  decorateGlossary('../');
  // a link from another page lands on its term once the list exists
  if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
} catch (err) {
  showError($('#error'), 'Drawing the glossary', err);
}
