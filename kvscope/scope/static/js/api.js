// Talking to the server: JSON requests, the NDJSON replay, the live SSE stream, and
// showing any failure as a message in the page (never only in the console).

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

async function request(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new ApiError(`could not reach the server (${err.message})`);
  }
  if (!response.ok) throw await failure(response);
  return response;
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
export function followEvents(url, onEvent, onStatus = () => {}) {
  onStatus('connecting');
  const source = new EventSource(url);
  source.onopen = () => onStatus('open');
  source.onmessage = (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;  // a keep-alive or a malformed line: nothing to fold
    }
    onEvent(event);
  };
  // The server ends the stream with a 'dropped' event when this page fell too far
  // behind; the browser then reconnects and starts again from a fresh snapshot.
  source.addEventListener('dropped', () => onStatus('dropped'));
  source.onerror = () => {
    onStatus(source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
  };
  return () => {
    source.close();
    onStatus('closed');
  };
}

// Shows `err` in an element with role="alert" (created after `anchor` if needed).
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
