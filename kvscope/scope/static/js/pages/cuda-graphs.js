import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {labForm, num} from '../lab.js';
import {PARTS, launchBody, readoutLines, stepBars, tableRows} from '../logic/cuda-graphs.js';

const COLOURS = {schedule_ms: 'var(--r0)', prepare_ms: 'var(--r1)', forward_ms: 'var(--r4)',
                 sample_update_ms: 'var(--r2)', other_ms: 'var(--cached-line)'};

replace($('#legend'), PARTS.map(([key, name]) => h('li', {},
  h('span', {class: 'swatch', 'aria-hidden': 'true', style: {background: COLOURS[key]}}), name)));

function barItem(bar) {
  const segments = bar.segments.map((s) => h('span', {
    class: 'cg-seg', title: `${s.name}: ${s.ms.toFixed(2)} ms`,
    style: {width: `${100 * s.share}%`, background: COLOURS[s.key]}}));
  return h('li', {'aria-label': bar.label}, h('span', {class: 'cg-track', 'aria-hidden': 'true'}, segments));
}

function show(run) {
  replace($('#bars'), stepBars(run).map((mode) => h('div', {class: 'cg-mode'},
    h('h3', {}, mode.name),
    h('ol', {class: 'cg-bars', 'aria-label': `${mode.name}: decode steps`}, mode.bars.map(barItem)))));
  replace($('#figures tbody'), tableRows(run).map(([what, loop, stack]) => h('tr', {},
    h('th', {scope: 'row'}, what), h('td', {}, loop), h('td', {}, stack))));
  replace($('#assumptions'), run.projection.assumptions.map((a) => h('li', {}, a)));
  $('#readout').textContent = readoutLines(run).join('\n');
}

// the run waits for the reader's button (two engine runs)
labForm($('#lab'), () => launchBody({batchSize: num('#batch-size'), steps: num('#steps')}), show,
        {path: 'lab/launch-overhead', label: 'The launch-overhead run'});
