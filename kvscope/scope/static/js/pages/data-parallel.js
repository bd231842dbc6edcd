import '../chrome.js';
import {$, h, replace} from '../dom.js';
import {labForm, num} from '../lab.js';
import {POLICIES, tag, requestLine, loadsText, chipLabel, totalsLine, lanes, cachedShare, legendItems,
  tableRows, comparison, readoutLines, nextIndex, routingBody, lines, policyOf} from '../logic/data-parallel.js';

const panelOf = (name) => $(`#policy-${name}`);

// one panel per policy, side by side
replace($('#policies'), POLICIES.map((name) => h('section', {class: 'panel dp-policy', id: `policy-${name}`,
                                                             'aria-labelledby': `h-${name}`},
  h('h3', {id: `h-${name}`}, h('code', {}, name)),
  h('div', {class: 'dp-lanes'}, h('p', {class: 'note'}, 'Run the workload to see the routing.')),
  h('p', {class: 'dp-detail', 'aria-live': 'polite'}),
  h('p', {class: 'dp-total'}))));

function drawLegend(systems) {
  replace($('#legend'), legendItems(systems).map((item) => h('li', {},
    h('span', {class: `swatch dp-s${item.system}`}), `${item.letter}: ${item.text}`)));
}

function detail(panel, r) {
  $('.dp-detail', panel).textContent = `${requestLine(r)} (${loadsText(r)}).`;
}

// A lane grid: one row per replica, one column per arrival; a single tab stop, the
// arrow keys, Home and End move between the requests in arrival order.
function drawPolicy(policy, count) {
  const panel = panelOf(policy.policy);
  const chips = [];
  const rows = lanes(policy).map((lane) => h('li', {class: 'dp-lane'},
    h('span', {class: 'dp-name'}, `replica ${lane.replica}`),
    h('ol', {class: 'dp-track', style: {gridTemplateColumns: `repeat(${count}, minmax(0, 1fr))`},
             'aria-label': `replica ${lane.replica}`},
      lane.requests.map((r) => {
        const chip = h('button', {type: 'button', class: `dp-req dp-s${r.system}${r.hit_tokens ? ' hit' : ''}`,
                                  tabindex: -1, 'aria-label': chipLabel(r), 'data-index': r.index},
          h('span', {class: 'dp-tag', 'aria-hidden': 'true'}, tag(r)),
          h('span', {class: 'dp-bar', 'aria-hidden': 'true', style: {width: `${100 * cachedShare(r)}%`}}));
        const show = () => detail(panel, r);
        chip.addEventListener('mouseenter', show);
        chip.addEventListener('focus', show);
        chip.addEventListener('click', show);
        chips[r.index] = chip;
        return h('li', {style: {gridColumn: String(r.index + 1)}}, chip);
      })),
    h('span', {class: 'dp-sum'}, lane.summary)));
  const first = chips.find(Boolean);
  if (first) first.tabIndex = 0;
  const group = h('ul', {class: 'dp-grid', role: 'group',
                         'aria-label': `${policy.policy}: where each request went, by replica`}, rows);
  group.addEventListener('keydown', (event) => {
    const at = chips.indexOf(document.activeElement);
    const next = at < 0 ? null : nextIndex(event.key, at, chips.length);
    if (next === null) return;
    event.preventDefault();
    chips[at].tabIndex = -1;
    chips[next].tabIndex = 0;
    chips[next].focus();
  });
  replace($('.dp-lanes', panel), group);
  $('.dp-detail', panel).textContent = 'Hover or focus a request to see why it went there.';
  $('.dp-total', panel).textContent = `${totalsLine(policy)}.`;
}

function drawTable(data) {
  replace($('#requests tbody'), tableRows(data).map((row) => h('tr', {},
    h('th', {scope: 'row'}, String(row.index)),
    h('td', {}, h('span', {class: `swatch dp-s${row.system}`, 'aria-hidden': 'true'}), ` ${row.tag}`),
    h('td', {}, String(row.cells[0].replica)),
    h('td', {}, row.cells[0].cached),
    h('td', {}, String(row.cells[1].replica)),
    h('td', {}, row.cells[1].reason),
    h('td', {}, row.cells[1].cached))));
}

function show(data) {
  const count = data.policies[0].requests.length;
  drawLegend(data.workload.systems);
  for (const name of POLICIES) drawPolicy(policyOf(data, name), count);
  $('#comparison').textContent = `${comparison(data)}.`;
  drawTable(data);
  $('#readout').textContent = readoutLines(data).join('\n');
}

drawLegend(lines($('#systems').value));

// the run waits for the reader's button: it steps every replica of both policies
labForm($('#lab'), () => routingBody({systems: $('#systems').value, questions: $('#questions').value,
                                      replicas: num('#replicas'), maxTokens: num('#max-tokens')}),
        (data) => show(data), {path: 'lab/routing', label: 'The routing run'});
