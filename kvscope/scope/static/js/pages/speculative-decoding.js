import '../chrome.js';
import {$, h, replace, svg} from '../dom.js';
import {PoolGrid, poolLegend, plural} from '../views.js';
import {labForm, playerFor, loadRun, num, emptyReadout, chatPrompt} from '../lab.js';
import {RID, speculativeRun, stepSoFar, textOf, shown, verdictLine, trimmed, readoutLines, verifyRows,
  slotBlocks, chartSummary, sameText, poolBlocks} from '../logic/speculative-decoding.js';

const pool = new PoolGrid($('#pool'), {label: 'KV pool', legend: false});
$('#pool').prepend(poolLegend({highlight: 'trimmed at this step'}));
let run = null;  // the loaded run, analysed once (see speculativeRun)

// -- the form ---------------------------------------------------------------------------

const method = () => document.querySelector('input[name="method"]:checked').value;
function showMethodOptions() {
  const ngram = method() === 'ngram';
  $('#lookup-label').hidden = !ngram;
  $('#layers-label').hidden = ngram;
}
for (const radio of document.querySelectorAll('input[name="method"]')) {
  radio.addEventListener('change', showMethodOptions);
}
showMethodOptions();

const k = $('#k');
const sayK = () => {
  $('#k-out').textContent = k.value;
  k.setAttribute('aria-valuetext', `${plural(Number(k.value), 'draft')} per step`);
};
k.addEventListener('input', sayK);
sayK();

// -- pictures ----------------------------------------------------------------------------

function drawStrip(now) {
  const v = now.verify;
  if (!v) {
    replace($('#strip'), h('li', {class: 'note'}, 'No drafts verified at this step.'));
    replace($('#rows tbody'));
    return;
  }
  const bonus = v.accepted === v.drafts.length;
  const target = v.tokens.at(-1);
  const quoted = (id) => JSON.stringify(textOf(run, id));
  replace($('#strip'),
    h('li', {class: 'tok known', 'aria-label': `known token ${quoted(v.known)}`},
      h('span', {class: 'what'}, 'known'), h('span', {class: 't'}, shown(run, v.known))),
    v.drafts.map((id, i) => {
      const ok = i < v.accepted;
      return h('li', {class: `tok ${ok ? 'acc' : 'rej'}`,
                      'aria-label': `draft ${i + 1} ${quoted(id)}: ${ok ? 'accepted' : 'rejected'}`},
        h('span', {class: 'what'}, `draft ${i + 1} ${ok ? '✓' : '✕'}`), h('span', {class: 't'}, shown(run, id)));
    }),
    h('li', {class: `tok ${bonus ? 'bonus' : 'fix'}`,
             'aria-label': `the target's ${bonus ? 'bonus' : 'correction'} ${quoted(target)}`},
      h('span', {class: 'what'}, bonus ? 'bonus' : 'correction'), h('span', {class: 't'}, shown(run, target))));
  replace($('#rows tbody'), verifyRows(run, v).map((row, i) => h('tr', {class: row.kind},
    h('td', {}, String(i)), h('td', {class: 'tokcell'}, row.input), h('td', {class: 'tokcell'}, row.choice),
    h('td', {class: 'tokcell'}, row.checked), h('td', {class: 'wrap'}, row.verdict))));
}

// The request's blocks this step wrote into, one cell per slot.
function drawSlots(now, trimmedNow) {
  const v = now.verify;
  if (!v) {
    replace($('#slots'), h('p', {class: 'note'}, trimmedNow.length
      ? `No drafts at this step; trimmed blocks: ${trimmedNow.join(', ')}.` : 'No drafts at this step.'));
    return;
  }
  // blocks given back after the pass (only rejected drafts); scratch slots of the
  // early-exit draft were given back before the step was scheduled, not from this table
  const {first, blocks} = slotBlocks(run, v, new Set(trimmed(now).rejected));
  const items = blocks.map((b) => h('li', {class: `spec-block${b.trimmed ? ' trimmed' : ''}`},
    h('span', {class: 'name'}, `block ${b.id}${b.trimmed ? ' · trimmed' : ''}`),
    h('ol', {'aria-label': `block ${b.id} (logical block ${b.logical})${b.trimmed ? ', trimmed at this step' : ''}`},
      b.cells.map((c) => h('li', {class: `slot ${c.kind}`, title: c.label, 'aria-label': c.label}, c.text)))));
  replace($('#slots'),
    first ? h('p', {class: 'note'}, `Logical blocks 0–${first - 1} (${plural(first, 'block')}) hold earlier tokens.`) : null,
    h('ul', {class: 'spec-blocks'}, items));
}

function drawChart(req, step) {
  const W = 600;
  const H = 130;
  const top = 16;
  const band = H - top - 16;
  const most = run.spec.num_speculative_tokens + 1;
  const bw = Math.min(48, W / Math.max(1, run.passes.length));
  const unit = band / most;
  const seen = req.verifications;
  const chart = svg('svg', {viewBox: `0 0 ${W} ${H}`, role: 'img'});
  seen.forEach((v, i) => {
    const x = i * bw + 1;
    const w = Math.max(1, bw - 2);
    const drafted = v.draftTokenIds.length;
    const base = top + band;
    chart.append(svg('rect', {x, y: base - v.numAccepted * unit, width: w, height: v.numAccepted * unit, class: 'acc'}));
    chart.append(svg('rect', {x, y: base - drafted * unit, width: w, height: (drafted - v.numAccepted) * unit, class: 'rej'}));
    const bonus = v.numAccepted === drafted;
    const y = bonus ? base - (drafted + 1) * unit : base - (v.numAccepted + 1) * unit;
    chart.append(svg('rect', {x: x + w / 4, y, width: w / 2, height: unit, class: bonus ? 'bonus' : 'fix'}));
    if (v.step === step) {
      chart.append(svg('rect', {x: x - 1, y: top - 2, width: w + 2, height: band + 4, class: 'now-box'}));
    }
  });
  chart.append(svg('text', {x: 2, y: top - 4, class: 'axis'}, `tokens per verifying pass (at most ${most})`));
  chart.append(svg('text', {x: 2, y: H - 2, class: 'axis'}, seen.length
    ? `passes 1–${seen.length} of the run's ${run.passes.length}`
    : `no pass yet (the run has ${run.passes.length})`));
  const summary = chartSummary(req);
  chart.setAttribute('aria-label', summary);
  replace($('#chart'), chart, h('p', {class: 'note'}, summary));
}

function drawOutputs() {
  const items = [h('li', {},
    h('span', {class: 'meta'}, `with speculative decoding, ${plural(run.output.token_ids.length, 'token')}: `),
    h('span', {class: 'text'}, run.output.text))];
  if (run.plain) {
    items.push(h('li', {},
      h('span', {class: 'meta'}, `the target alone, ${plural(run.plain.token_ids.length, 'token')}: `),
      h('span', {class: 'text'}, run.plain.text)));
  }
  $('#same').textContent = sameText(run);
  replace($('#outputs'), items);
}

function render(state, timeline) {
  if (!state.engine || !run) {
    $('#readout').textContent = emptyReadout(timeline);
    return;
  }
  const step = timeline.lastEvent ? state.step : 0;
  const now = stepSoFar(run, step, timeline.pos);
  const req = state.requests[RID];
  const cut = trimmed(now).all;
  pool.update(state, {highlight: new Set(cut)});
  drawStrip(now);
  drawSlots(now, cut);
  $('#step-line').textContent = verdictLine(run, step, now);
  drawChart(req ?? {verifications: [], draftTokens: 0, acceptedTokens: 0}, step);
  $('#readout').textContent = readoutLines(run, state, timeline).join('\n');
}

const player = playerFor($('#player'), render, {label: 'Speculative decoding run'});

const go = labForm($('#lab'), async () => {
  const {prompt, count} = await chatPrompt($('#prompt').value, $('#chat').checked);
  const drafts = num('#k');
  const bs = num('#block-size');
  const maxTokens = num('#max-tokens');
  const spec = {method: method(), num_speculative_tokens: drafts};
  if (spec.method === 'ngram') spec.prompt_lookup_max = num('#lookup-max');
  else spec.draft_layers = num('#draft-layers');
  $('#prompt-text').textContent = prompt;
  return {
    prompts: [prompt],
    max_tokens: maxTokens,
    block_size: bs,
    num_blocks: poolBlocks(count, bs, maxTokens, drafts),
    enable_prefix_caching: false,
    ignore_eos: false,
    temperature: 0,
    speculative_config: spec,
    compare_plain: true,
  };
}, (data, body) => {
  run = speculativeRun(data, body);
  drawOutputs();
  // open after the first verifying pass
  const first = run.passes[0];
  const timeline = loadRun(player, data.events, 0);
  player.seek(first ? timeline.stopOfStep(first.step) : timeline.stops[0] ?? timeline.length);
});
go();
