// The glossary page's order and wording, free of the DOM.

// The terms sorted as a reader looks them up: by name, ignoring case.
export function alphabetical(terms) {
  return [...terms].sort((a, b) => a.term.localeCompare(b.term, 'en', {sensitivity: 'base'}));
}

// The other words that stand for a term: its forms without the plural-only ones (the
// term plus "s"), so "blocks" is not listed under "block".
export function otherForms(term) {
  const name = term.term.toLowerCase();
  return term.forms.slice(1).filter((f) => {
    const form = f.toLowerCase();
    return form !== `${name}s` && form !== `${name}es`;
  });
}
