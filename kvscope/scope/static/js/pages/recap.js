// The recap: one row per technique with what it buys; a measured row's button runs its
// lesson's default workload on the server (POST /scope/api/lab/run, the lesson's own
// body) and shows the figure computed from the events (../logic/recap.js).

import {LESSONS} from '../chrome.js';
import {$, h, replace} from '../dom.js';
import {runLab, clearError, showError} from '../api.js';
import {chatPrompt} from '../lab.js';
import {decorateGlossary} from '../glossary.js';
import {ROWS, READING, measured} from '../logic/recap.js';

const titles = new Map(LESSONS.map((l) => [l.page, l.title]));
const figureOf = new Map();  // row id -> its figure element
const buttonOf = new Map();

replace($('#rows'), ROWS.map((row) => {
  const links = row.lessons.map((page, i) => [i ? ', ' : '', h('a', {href: `${page}.html`}, titles.get(page) ?? page)]);
  const li = h('li', {'data-row': row.id},
    h('h2', {}, row.title),
    h('p', {}, row.buys),
    h('p', {class: 'note'}, 'Shown in: ', links, '.'));
  if (measured(row)) {
    const figure = h('p', {class: 'figure', 'aria-live': 'polite', 'data-state': 'none'}, 'Not measured yet.');
    const button = h('button', {type: 'button', class: 'measure', 'aria-label': `Measure: ${row.title}`,
                                onclick: () => measure(row)}, 'Measure');
    figureOf.set(row.id, figure);
    buttonOf.set(row.id, button);
    li.append(h('div', {class: 'form-row'}, button), figure);
  } else {
    li.append(h('p', {class: 'figure no-gloss', 'data-state': 'link'}, 'Measured in its lesson.'));
  }
  return li;
}));
replace($('#reading'), READING.map(([work, what]) => h('li', {}, h('cite', {}, work), `: ${what}`)));
decorateGlossary('../');

// Runs one row's workload (its runs one after the other) and shows its figure.
async function measure(row) {
  const figure = figureOf.get(row.id);
  const button = buttonOf.get(row.id);
  figure.dataset.state = 'running';
  figure.textContent = 'Running the engine on the server…';
  let bodies;
  try {
    bodies = row.chat ? row.bodies((await chatPrompt(row.chat, true)).prompt) : row.bodies();
  } catch (err) {
    showError($('#error'), `Preparing the ${row.title} run`, err);
    figure.dataset.state = 'failed';
    figure.textContent = 'Not measured: the run could not be prepared.';
    return false;
  }
  const responses = [];
  for (const body of bodies) {
    const data = await runLab(body, {button, errorEl: $('#error'), label: `The ${row.title} run`});
    if (!data) {
      figure.dataset.state = 'failed';
      figure.textContent = 'Not measured: the run failed (see the message above).';
      return false;
    }
    responses.push(data);
  }
  try {
    figure.textContent = row.figure(responses, bodies).text;
    figure.dataset.state = 'measured';
    return true;
  } catch (err) {
    showError($('#error'), `Reading the ${row.title} run`, err);
    figure.dataset.state = 'failed';
    figure.textContent = 'Not measured: the run\'s events could not be read.';
    return false;
  }
}

$('#measure-all').addEventListener('click', async () => {
  const all = $('#measure-all');
  all.disabled = true;
  clearError($('#error'));
  const rows = ROWS.filter(measured);
  let done = 0;
  for (const row of rows) {
    $('#status').textContent = `Measuring ${row.title} (${done + 1} of ${rows.length})…`;
    if (await measure(row)) done += 1;
  }
  $('#status').textContent = `Measured ${done} of ${rows.length} rows.`;
  all.disabled = false;
});
