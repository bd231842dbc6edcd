// The server's API key, for a server started with `--api-key`: kept in this tab's
// sessionStorage only (never in the URL, never in localStorage, never logged), sent as
// `Authorization: Bearer <key>` on every API call, and asked for with a small form
// the first time a call answers 401.

import {h} from './dom.js';

const STORAGE_KEY = 'kvscope.apiKey';
// Asked with the candidate key before the form closes: any answer but 401 means the
// key got past the server's check (every API route sits behind the same key).
const CHECK_URL = '/scope/api/info';

let memoryKey = null;  // the entered key, for when sessionStorage refuses to hold it
let pending = null;  // the one open form's promise, shared by every call that got a 401

function storedKey() {
  try {
    return sessionStorage.getItem(STORAGE_KEY);
  } catch {
    return null;  // storage disabled: the form asks again on each page
  }
}

function storeKey(key) {
  try {
    sessionStorage.setItem(STORAGE_KEY, key);
  } catch { /* storage disabled: the key lasts as long as this page */ }
  memoryKey = key;
}

function dropKey() {
  try {
    sessionStorage.removeItem(STORAGE_KEY);
  } catch { /* nothing stored */ }
  memoryKey = null;
}

function currentKey() {
  return storedKey() ?? memoryKey;
}

// `headers` plus the Authorization header when a key is known. Returns the key it
// used too, so that a 401 can tell a stale key from the current one.
export function withKey(headers = {}) {
  const key = currentKey();
  if (key === null) return {headers, key};
  showForgetControl();
  return {headers: {...headers, Authorization: `Bearer ${key}`}, key};
}

// A call sent with `usedKey` answered 401. Resolves once a key the server accepts is
// stored; the caller then sends its request again. Calls failing together share one
// form and all resume after one correct key.
export function keyNeeded(usedKey) {
  if (currentKey() !== usedKey) return Promise.resolve();  // a newer key came meanwhile
  if (!pending) {
    const rejected = usedKey !== null;
    if (rejected) dropKey();
    pending = askForKey(rejected).finally(() => { pending = null; });
  }
  return pending;
}

function askForKey(rejectedStoredKey) {
  return new Promise((resolve) => {
    const input = h('input', {type: 'password', id: 'api-key', name: 'api-key', required: true,
                              autocomplete: 'off', spellcheck: 'false'});
    const alert = h('p', {class: 'error', role: 'alert', hidden: true});
    const button = h('button', {type: 'submit', class: 'primary'}, 'Use this key');
    const form = h('form', {},
      h('p', {}, 'This server requires its API key. The scope keeps it in this browser tab ',
        'only and sends it with each request it makes.'),
      h('div', {class: 'form-row'}, h('label', {for: 'api-key'}, 'API key', input), button),
      alert);
    const panel = h('section', {class: 'panel key-form', 'aria-labelledby': 'key-form-h'},
      h('h2', {id: 'key-form-h'}, 'API key needed'), form);
    if (rejectedStoredKey) say(alert, 'The server no longer accepts the stored key; enter it again.');
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      button.disabled = true;
      const problem = await checkKey(input.value.trim());
      button.disabled = false;
      if (problem) {
        say(alert, problem);
        input.select();
        return;
      }
      storeKey(input.value.trim());
      panel.remove();
      resolve();
    });
    place(panel);
    input.focus();
  });
}

// null when the server accepts `key`, else what to tell the reader.
async function checkKey(key) {
  if (!key) return 'Enter the key the server was started with (--api-key).';
  let response;
  try {
    response = await fetch(CHECK_URL, {headers: {Authorization: `Bearer ${key}`}});
  } catch (err) {
    return `Could not reach the server to check the key (${err.message}).`;
  }
  return response.status === 401 ? 'The server did not accept that key (HTTP 401). '
    + 'Check it and try again.' : null;
}

function say(alert, message) {
  alert.textContent = message;
  alert.hidden = false;
}

// Near the top of the page: under its title, above everything that waits for data.
function place(panel) {
  const main = document.querySelector('main') ?? document.body;
  const title = main.querySelector('h1');
  if (title) title.after(panel);
  else main.prepend(panel);
}

// A way to drop the key before the tab closes (a shared computer): shown in the
// footer once a key is in use; forgetting reloads the page, which then asks again.
function showForgetControl() {
  if (document.getElementById('forget-key')) return;
  const control = h('p', {id: 'forget-key'}, 'This tab holds the server\'s API key. ',
    h('button', {type: 'button', onclick: () => { dropKey(); location.reload(); }},
      'Forget the API key'));
  (document.querySelector('.site-footer') ?? document.body).append(control);
}
