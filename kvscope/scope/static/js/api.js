// Talking to the server: JSON requests, the NDJSON replay, the live SSE stream, and
// showing any failure as a message in the page (never only in the console). With a
// server API key, every call carries it (see auth.js).

import {withKey, keyNeeded} from './auth.js';

export const API = '/scope/api';

export class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body?.error?.message) message = body.error.message;
    else if (typeof body?.detail === 'string') message = body.detail;
  } catch { /* not JSON: keep the status line */ }
  return new ApiError(message, response.status);
}

// fetch, with the API key when one is known. A 401 waits for the key form (one for
// every call failing together) and sends the request again with the entered key.
async function request(url, options = {}) {
  for (;;) {
    const {headers, key} = withKey(options.headers);
    let response;
    try {
      response = await fetch(url, {...options, headers});
    } catch (err) {
      throw new ApiError(`could not reach the server (${err.message})`);
    }
    if (response.status === 401) {
      await keyNeeded(key);
      continue;
    }
    if (!response.ok) throw await failure(response);
    return response;
  }
}

export async function getJSON(url) {
  return (await request(url, {headers: {Accept: 'application/json'}})).json();
}

export async function postJSON(url, body) {
  const response = await request(url, {
    method: 'POST',
    headers: {'Content-Type': 'application/json', Accept: 'application/json'},
    body: JSON.stringify(body),
  });
  return response.json();
}

// Every event of a recorded run (one JSON object per line).
export async function getNdjson(url) {
  const text = await (await request(url)).text();
  return text.split('\n').filter((line) => line.trim()).map((line) => JSON.parse(line));
}

// Follow a Server-Sent Events stream of events. onEvent gets each parsed event;
// onStatus gets 'connecting' | 'open' | 'dropped' | 'reconnecting' | 'closed'. Returns a close().
// Read with fetch rather than EventSource, which cannot send the Authorization header.
export function followEvents(url, onEvent, onStatus = () => {}) {
  const controller = new AbortController();
  const {signal} = controller;
  const follow = async () => {
    let status = 'connecting';
    let failures = 0;  // in a row: the wait before the next try grows with them
    while (!signal.aborted) {
      onStatus(status);
      try {
        const response = await request(url, {headers: {Accept: 'text/event-stream'},
                                              cache: 'no-store', signal});
        onStatus('open');
        failures = 0;
        // true: the server ended the stream with 'dropped' because this page fell too
        // far behind; reconnecting at once starts again from a fresh snapshot
        status = await readEvents(response.body, onEvent) ? 'dropped' : 'reconnecting';
      } catch (err) {
        if (signal.aborted) return;
        if (err.status) {  // an HTTP error, not a lost connection: retrying would not help
          onStatus('closed');
          return;
        }
        status = 'reconnecting';
      }
      if (status === 'reconnecting') {
        failures += 1;
        await pause(Math.min(500 * 2 ** failures, 8000), signal);
      }
    }
  };
  follow();
  return () => {
    if (signal.aborted) return;
    controller.abort();
    onStatus('closed');
  };
}

// Reads an SSE body to its end, calling onEvent with each `data:` JSON. Resolves true
// when the server ended it with `event: dropped`.
async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let block = [];
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return false;
    buffer += decoder.decode(value, {stream: true});
    const lines = buffer.split('\n');
    buffer = lines.pop();  // an unfinished line waits for the next chunk
    for (const raw of lines) {
      const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
      if (line !== '') {
        block.push(line);
        continue;
      }
      // a blank line ends one event
      const event = sseEvent(block);
      block = [];
      if (event.type === 'dropped') {
        reader.cancel().catch(() => {});
        return true;
      }
      if (event.type === 'message' && event.data !== null) deliver(event.data, onEvent);
    }
  }
}

// The type and data of one event from its lines; comment lines (':', the server's
// keep-alives) and fields other than `event` and `data` are skipped.
function sseEvent(lines) {
  let type = 'message';
  const data = [];
  for (const line of lines) {
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') type = value;
    else if (field === 'data') data.push(value);
  }
  return {type, data: data.length ? data.join('\n') : null};
}

function deliver(data, onEvent) {
  let event;
  try {
    event = JSON.parse(data);
  } catch {
    return;  // a malformed event: nothing to fold
  }
  onEvent(event);
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done);
    if (signal.aborted) done();
  });
}

// Shows `err` in `el`, an element with role="alert".
export function showError(el, what, err) {
  const status = err?.status ? ` (HTTP ${err.status})` : '';
  el.textContent = `${what} failed${status}: ${err?.message ?? err}`;
  el.hidden = false;
}

export function clearError(el) {
  el.textContent = '';
  el.hidden = true;
}

// Run a lab engine: disables `button` while the server works, reports progress in
// `statusEl` and failures in `errorEl`. Resolves to the response, or null on failure
// (`keepsPrevious`: say that the page still shows an earlier run).
export async function runLab(body, {button, statusEl, errorEl, path = 'lab/run',
                                    label = 'The engine run', keepsPrevious = false}) {
  clearError(errorEl);
  if (button) button.disabled = true;
  statusEl?.setAttribute('aria-busy', 'true');
  if (statusEl) statusEl.textContent = 'Running the engine on the server…';
  const started = performance.now();
  try {
    const data = await postJSON(`${API}/${path}`, body);
    if (statusEl) {
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      statusEl.textContent = `Done in ${seconds} s.`;
    }
    return data;
  } catch (err) {
    showError(errorEl, label, err);
    if (statusEl) statusEl.textContent = keepsPrevious ? 'The picture below still shows the previous run.' : '';
    return null;
  } finally {
    if (button) button.disabled = false;
    statusEl?.removeAttribute('aria-busy');
  }
}
