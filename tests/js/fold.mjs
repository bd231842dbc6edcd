// Fold a JSONL event file with the scope's reducer and print, after every event, the
// KV bookkeeping the engine keeps too (one JSON line per event). Used by
// tests/test_events_reducer.py:  node tests/js/fold.mjs STATE_JS EVENTS_JSONL
import {readFileSync} from 'node:fs';
import {pathToFileURL} from 'node:url';

const [stateJs, eventsFile] = process.argv.slice(2);
const {emptyState, applyEvent, poolSummary} = await import(pathToFileURL(stateJs).href);
const events = readFileSync(eventsFile, 'utf8').split('\n').filter((l) => l.trim())
  .map((l) => JSON.parse(l));
const state = emptyState();
const lines = [];
for (const event of events) {
  applyEvent(state, event);
  lines.push(JSON.stringify({
    tables: state.tables,
    refcounts: state.blocks.map((b) => b.ref),
    cached: state.blocks.map((b) => b.hash !== null),
    free: poolSummary(state).freeCount,
    swapped: state.swapped,
    statuses: Object.fromEntries(state.order.map((id) => [id, state.requests[id].status])),
    computed: Object.fromEntries(state.order.map((id) => [id, state.requests[id].numComputed])),
  }));
}
process.stdout.write(lines.join('\n') + '\n');
