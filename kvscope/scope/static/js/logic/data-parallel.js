// What a routing run (POST /scope/api/lab/routing) says, as text and rows: where each
// request of the shared-prefix workload went under each policy, why, and how many of its
// prompt tokens its replica's prefix cache already held. No DOM here.

import {int, pct, plural} from '../format.js';

export const POLICIES = ['round_robin', 'cache_aware'];
export const MAX_SYSTEMS = 6;

// System prompt s is named by a letter, question q by its number from 1: "B3".
export const letter = (s) => String.fromCharCode(65 + s);
export const tag = (r) => `${letter(r.system)}${r.question + 1}`;

// The non-empty lines of a textarea's text, trimmed.
export function lines(text) {
  return text.split('\n').map((line) => line.trim()).filter(Boolean);
}

// The first `n` words of a text, with an ellipsis when there are more.
export function firstWords(text, n = 6) {
  const words = text.trim().split(/\s+/);
  return words.length > n ? `${words.slice(0, n).join(' ')}…` : words.join(' ');
}

export function policyOf(data, name) {
  return data.policies.find((p) => p.policy === name);
}

export function reasonText(r) {
  switch (r.reason) {
    case 'round_robin': return 'next in turn';
    case 'prefix': return `prefix: ${int(r.matched_chars)} of its ${int(r.prompt_chars)} characters `
      + 'match a recent prompt there';
    case 'no_match': return r.matched_chars
      ? `no match (at most ${int(r.matched_chars)} of ${int(r.prompt_chars)} characters shared): the least loaded`
      : 'no match (no recent prompt starts the same way): the least loaded';
    case 'load': return 'load: in-flight counts too uneven, so the least loaded';
    default: return r.reason;
  }
}

export function cachedText(r) {
  return `${int(r.hit_tokens)} of ${int(r.prompt_tokens)} prompt tokens cached`;
}

export function loadsText(r) {
  return `in flight then: ${r.loads.join(', ')}`;
}

// One request under one policy, for the readout and the widget's detail line.
export function requestLine(r) {
  return `request ${r.index} (${tag(r)}) → replica ${r.replica}: ${reasonText(r)}; ${cachedText(r)}`;
}

// What a request's chip says to a screen reader.
export function chipLabel(r) {
  return `request ${r.index}, ${tag(r)}: replica ${r.replica}, ${r.reason}, ${cachedText(r)}`;
}

export function replicaSummary(rep) {
  return `replica ${rep.replica}: ${plural(rep.requests, 'request')}, ${int(rep.prefix_cache_hits)} of `
    + `${int(rep.prefix_cache_queries)} prompt tokens cached (${pct(rep.hit_rate)})`;
}

export function totalsLine(policy) {
  const t = policy.totals;
  return `${policy.policy}: ${int(t.prefix_cache_hits)} of ${int(t.prefix_cache_queries)} prompt tokens `
    + `from the prefix caches (${pct(t.hit_rate)}), ${int(t.num_computed_tokens)} tokens computed`;
}

export function workloadLine(w) {
  const n = w.systems.length * w.questions.length;
  return `${plural(w.systems.length, 'system prompt')} × ${plural(w.questions.length, 'question')} = `
    + `${plural(n, 'request')} over ${w.replicas} replicas; blocks of ${w.block_size} tokens, `
    + `${w.num_blocks} per replica; ${plural(w.max_tokens, 'token')} generated per request`;
}

// cache_aware against round_robin: cached prompt tokens and tokens computed.
export function comparison(data) {
  const rr = policyOf(data, 'round_robin').totals;
  const ca = policyOf(data, 'cache_aware').totals;
  const more = ca.prefix_cache_hits - rr.prefix_cache_hits;
  const fewer = rr.num_computed_tokens - ca.num_computed_tokens;
  if (more === 0) {
    return `cache_aware and round_robin found the same ${int(ca.prefix_cache_hits)} prompt tokens cached `
      + `and computed ${int(ca.num_computed_tokens)} and ${int(rr.num_computed_tokens)} tokens`;
  }
  const [winner, loser] = more > 0 ? ['cache_aware', 'round_robin'] : ['round_robin', 'cache_aware'];
  return `${winner} found ${int(Math.abs(more))} more prompt tokens cached than ${loser} and computed `
    + `${int(Math.abs(fewer))} ${fewer * more >= 0 ? 'fewer' : 'more'} tokens`;
}

// Whether every replica of both runs ended with every block free or cached.
export function freeLine(data) {
  const left = data.policies.flatMap((p) => p.replicas.filter((r) => !r.all_blocks_free)
    .map((r) => `${p.policy} replica ${r.replica} has ${r.num_free_blocks} of ${r.num_blocks} free`));
  if (!left.length) {
    return `every replica ends with all ${data.workload.num_blocks} blocks free or cached`;
  }
  return `NOT every block is free at the end: ${left.join('; ')}`;
}

export function readoutLines(data) {
  const out = [workloadLine(data.workload)];
  for (const name of POLICIES) {
    const policy = policyOf(data, name);
    out.push(totalsLine(policy));
    for (const rep of policy.replicas) out.push(`  ${replicaSummary(rep)}`);
    for (const r of policy.requests) out.push(`  ${requestLine(r)}`);
  }
  out.push(comparison(data), freeLine(data));
  return out;
}

// One lane per replica: its requests in arrival order and its summary.
export function lanes(policy) {
  return policy.replicas.map((rep) => ({
    replica: rep.replica,
    summary: replicaSummary(rep),
    requests: policy.requests.filter((r) => r.replica === rep.replica),
  }));
}

// The share of a request's prompt its replica's cache held (0 to 1).
export function cachedShare(r) {
  return r.prompt_tokens ? r.hit_tokens / r.prompt_tokens : 0;
}

// The legend: each system prompt's letter and its first words.
export function legendItems(systems) {
  return systems.map((text, s) => ({system: s, letter: letter(s), text: firstWords(text)}));
}

// The table of every request under both policies: one row per arrival.
export function tableRows(data) {
  const rr = policyOf(data, 'round_robin').requests;
  const ca = policyOf(data, 'cache_aware').requests;
  return rr.map((r, i) => ({
    index: r.index,
    tag: tag(r),
    system: r.system,
    cells: [rr[i], ca[i]].map((x) => ({replica: x.replica, reason: x.reason,
                                       cached: `${int(x.hit_tokens)} / ${int(x.prompt_tokens)}`})),
  }));
}

// The next request to focus in a lane grid on a key press (arrival order); null for
// other keys.
export function nextIndex(key, index, count) {
  switch (key) {
    case 'ArrowRight': case 'ArrowDown': return Math.min(count - 1, index + 1);
    case 'ArrowLeft': case 'ArrowUp': return Math.max(0, index - 1);
    case 'Home': return 0;
    case 'End': return count - 1;
    default: return null;
  }
}

// The request body from the form's values; throws with a reader-facing message.
export function routingBody({systems, questions, replicas, maxTokens}) {
  const s = lines(systems);
  const q = lines(questions);
  if (s.length < 2 || s.length > MAX_SYSTEMS) {
    throw new Error(`give 2 to ${MAX_SYSTEMS} system prompts, one per line (got ${s.length})`);
  }
  if (q.length < 2 || q.length > 8) throw new Error(`give 2 to 8 questions, one per line (got ${q.length})`);
  return {systems: s, questions: q, replicas, max_tokens: maxTokens, block_size: 16};
}
