// #/jobs/<id>: one job, live. The job (GET /jobs/{id}) gives its input; its dashboard comes from the
// event stream (js/stream.js): progress, rate (the API's overall records_per_second; its smoothed rate,
// which a fan-out's lanes finishing batches together push up, only drives the API's ETA), ETA, tokens, cost by category, the budget as a gauge,
// per-model status of a fan-out job, the failure; then the download links per format. A judged job
// shows its judge's scores (per criterion the mean and the records per score, the lowest records).
import { html, nothing, render as paint } from "/static/vendor/lit-html.js";
import { api } from "../api.js";
import { SETTLED, followJob } from "../stream.js";
import { errorView, formatDate, formatDuration, formatMoney, formatNumber, statusBadge } from "../ui.js";

const FINISHED_WITH_DATA = new Set(["COMPLETED", "COMPLETED_WITH_ERRORS"]);
/** What a 409 from DELETE /jobs/{id} means: another change to the job was recorded first. */
const CHANGED_MEANWHILE = "The job changed while this was asked (the page shows its state now): look, then try again.";

export async function render(root, params) {
  const jobId = params.id;
  const state = { job: null, dashboard: null, via: null, error: null, actionError: null, notice: null, downloads: null, busy: false };
  const update = () => paint(view(state, { cancel: removeOrCancel, remove }), root);

  try {
    state.job = await api("GET", `/jobs/${encodeURIComponent(jobId)}`);
  } catch (error) {
    state.error = error;
    paint(html`<h1>Job</h1>${errorView(error)}<p><a href="#/jobs">Back to your jobs</a></p>`, root);
    return undefined;
  }
  update();

  const stop = followJob(jobId, {
    onDashboard(dashboard, via) {
      state.dashboard = dashboard;
      state.via = via;
      state.error = null;
      if (FINISHED_WITH_DATA.has(dashboard.status) && state.downloads === null) loadDownloads();
      update();
    },
    onError(error) {
      state.error = error;
      update();
    },
  });

  async function loadDownloads() {
    state.downloads = [];
    const formats = state.job.input.output_format;
    const found = await Promise.all(
      formats.map((format) =>
        api("GET", `/jobs/${encodeURIComponent(jobId)}/download`, { query: { format } }).then(
          (answer) => ({ format, answer }),
          (error) => ({ format, error }),
        ),
      ),
    );
    state.downloads = found;
    update();
  }

  /** DELETE /jobs/{id}: cancels an unfinished job, deletes a finished one (then back to the list). */
  async function removeOrCancel() {
    state.busy = true;
    state.actionError = null;
    update();
    try {
      const answer = await api("DELETE", `/jobs/${encodeURIComponent(jobId)}`);
      state.notice = answer ? answer.message : null;
      if (answer && answer.message === "Job deleted") {
        stop();
        window.location.hash = "#/jobs";
        return;
      }
    } catch (error) {
      state.actionError = error.status === 409 ? Object.assign(error, { message: `${error.message}. ${CHANGED_MEANWHILE}` }) : error;
    }
    state.busy = false;
    update();
  }

  function remove() {
    if (window.confirm(`Delete job ${jobId} and its dataset? This cannot be undone.`)) {
      removeOrCancel();
    }
  }

  return stop;
}

function view(state, actions) {
  const { job, dashboard } = state;
  const status = dashboard ? dashboard.status : job.status;
  const settled = SETTLED.has(status);
  return html`<hgroup>
      <h1>Job <code>${job.job_id}</code></h1>
      <p>
        <span id="job-status">${statusBadge(status)}</span>
        ${(dashboard ? dashboard.cancel_requested : job.cancel_requested) && !settled ? html` — cancellation requested` : nothing}
        · template <a href="#/templates/${encodeURIComponent(job.input.template_id)}">${job.input.template_id}</a> v${job.input.template_version}
        · created ${formatDate(job.created_at)}
      </p>
      ${optionsLine(job.input)}
    </hgroup>
    ${errorView(state.error)}
    ${dashboard ? dashboardView(dashboard, state.via) : html`<p aria-busy="true">Connecting to the job's live progress…</p>`}
    ${dashboard && dashboard.failure
      ? html`<div class="error-box" role="alert" id="job-failure"><strong>${dashboard.failure.code}:</strong> ${dashboard.failure.reason}</div>`
      : nothing}
    ${downloadsView(state.downloads)}
    <section aria-label="Actions">
      ${errorView(state.actionError)} ${state.notice ? html`<p role="status">${state.notice}.</p>` : nothing}
      <div class="actions">
        ${settled
          ? html`<button type="button" class="secondary" id="delete-job" @click=${actions.remove} ?disabled=${state.busy}>Delete job</button>`
          : html`<button type="button" class="secondary" id="cancel-job" @click=${actions.cancel} ?disabled=${state.busy}>Cancel job</button>`}
        <a href="#/jobs">Back to your jobs</a>
      </div>
    </section>`;
}

function dashboardView(d, via) {
  const percent = Math.min(100, Number(d.percent) || 0);
  const budget = d.budget;
  const tokens = Object.values(d.tokens || {}).reduce(
    (sum, t) => ({ input: sum.input + t.input_tokens, output: sum.output + t.output_tokens, calls: sum.calls + t.calls }),
    { input: 0, output: 0, calls: 0 },
  );
  const settled = SETTLED.has(d.status);
  return html`<section aria-labelledby="progress-heading">
      <h2 id="progress-heading">Progress</h2>
      <label for="job-progress">
        <span id="job-percent" data-percent=${percent}>${percent.toFixed(1)} %</span>
        — ${formatNumber(d.records_generated)} of ${formatNumber(d.num_records)} records${d.failed_records ? html`, ${formatNumber(d.failed_records)} failed` : nothing}${d.duplicates_dropped ? html`, <span id="job-duplicates">${formatNumber(d.duplicates_dropped)} duplicates dropped</span>` : nothing}
      </label>
      <progress id="job-progress" max="100" value=${percent}></progress>
      <p class="muted" id="job-feed" data-via=${settled ? "settled" : via}>
        <small>${settled ? "The job has ended: nothing more will change." : via === "stream" ? "Live: updates as the job advances." : "Updating every 3 s (the live stream is unavailable)."}</small>
      </p>
      <dl class="stats">
        <div><dt>Rate</dt><dd id="job-rate">${d.timing.records_per_second ? `${d.timing.records_per_second.toFixed(1)} rec/s` : "—"}</dd></div>
        <div><dt>Time left</dt><dd>${settled ? "—" : formatDuration(d.timing.eta_seconds)}</dd></div>
        <div><dt>Running for</dt><dd>${formatDuration(d.timing.generation_seconds)}</dd></div>
        <div><dt>Tokens in / out</dt><dd>${formatNumber(tokens.input)} / ${formatNumber(tokens.output)}</dd></div>
        <div><dt>Model calls</dt><dd>${formatNumber(tokens.calls)}</dd></div>
        <div><dt>Batches</dt><dd>${formatNumber(d.batches)}</dd></div>
      </dl>
    </section>
    <section aria-labelledby="budget-heading">
      <h2 id="budget-heading">Budget</h2>
      <label for="job-budget">${formatMoney(budget.used)} of ${formatMoney(budget.limit)} used (${Number(budget.percentage_used).toFixed(1)} %)${d.cost.budget_exceeded ? " — budget exceeded" : ""}</label>
      <meter id="job-budget" min="0" max=${budget.limit} low=${budget.limit * 0.75} high=${budget.limit * 0.9} optimum="0" value=${budget.used}></meter>
      ${d.cost.warnings && d.cost.warnings.length ? html`<p>Warnings crossed: ${d.cost.warnings.map((w) => `${w} %`).join(", ")}</p>` : nothing}
      <div class="table-scroll">
        <table id="job-costs">
          <caption class="muted">Cost by category</caption>
          <tbody>
            <tr><th scope="row">Model calls</th><td>${formatMoney(d.cost.model_tokens)}</td></tr>
            <tr><th scope="row">Compute</th><td>${formatMoney(d.cost.compute)}</td></tr>
            <tr><th scope="row">Storage</th><td>${formatMoney(d.cost.storage)}</td></tr>
            <tr><th scope="row">Total</th><td><strong>${formatMoney(d.cost.total)}</strong></td></tr>
          </tbody>
        </table>
      </div>
    </section>
    ${judgeView(d.judge)} ${perModelView(d.per_model)}`;
}

/** The job's data-quality options, as it was asked for (GET /jobs/{id}'s input). */
function optionsLine(input) {
  const options = [
    input.lineage ? "lineage" : "no lineage",
    input.cache ? "call cache" : null,
    input.dedup ? `dedup: ${input.dedup}` : null,
    input.judge ? `judged by ${input.judge.model}${input.judge.min_score != null ? `, min score ${input.judge.min_score}` : ""}` : null,
  ].filter(Boolean);
  return html`<p class="muted" id="job-options"><small>Options: ${options.join(" · ")}</small></p>`;
}

const SCORES = ["1", "2", "3", "4", "5"];

/** The judge's block: a table per criterion of the mean and records per score, each count drawn as a
 * bar (decoration: the number beside it is the figure), then the lowest-scored records. */
function judgeView(judge) {
  if (!judge) return nothing;
  const criteria = Object.entries(judge.criteria);
  const most = Math.max(1, ...criteria.flatMap(([, c]) => SCORES.map((s) => c.distribution[s] || 0)));
  return html`<section aria-labelledby="judge-heading" id="job-judge">
    <h2 id="judge-heading">Quality judge</h2>
    <p>
      <code>${judge.model}</code> · <span id="judge-judged">${formatNumber(judge.judged)} records judged</span>
      · <span id="judge-dropped">${formatNumber(judge.dropped)} dropped below the minimum score</span>
    </p>
    <div class="table-scroll">
      <table id="judge-criteria">
        <caption class="muted">Mean score and records per score (1 worst, 5 best)</caption>
        <thead><tr><th scope="col">Criterion</th><th scope="col">Mean</th>${SCORES.map((s) => html`<th scope="col">${s}</th>`)}</tr></thead>
        <tbody>
          ${criteria.map(
            ([name, c]) => html`<tr data-criterion=${name}>
              <th scope="row">${name}</th>
              <td class="judge-mean" data-mean=${c.mean ?? ""}>${c.mean == null ? "—" : Number(c.mean).toFixed(2)}</td>
              ${SCORES.map((s) => {
                const count = c.distribution[s] || 0;
                return html`<td class="judge-count" data-score=${s}>
                  <span class="judge-bar" aria-hidden="true" style="--share: ${count / most}"></span>${formatNumber(count)}
                </td>`;
              })}
            </tr>`,
          )}
        </tbody>
      </table>
    </div>
    ${judge.lowest.length
      ? html`<div class="table-scroll">
          <table id="judge-lowest">
            <caption class="muted">Lowest-scored records</caption>
            <thead><tr><th scope="col">Record</th><th scope="col">Record id</th>${judge.lowest.some((r) => r.model) ? html`<th scope="col">Model</th>` : nothing}<th scope="col">Mean</th></tr></thead>
            <tbody>
              ${judge.lowest.map(
                (r) => html`<tr data-record-id=${r.record_id}>
                  <td>${formatNumber(r.record_index)}</td>
                  <td><code>${r.record_id}</code></td>
                  ${judge.lowest.some((x) => x.model) ? html`<td><code>${r.model ?? ""}</code></td>` : nothing}
                  <td>${Number(r.mean).toFixed(2)}</td>
                </tr>`,
              )}
            </tbody>
          </table>
        </div>`
      : nothing}
  </section>`;
}

function perModelView(perModel) {
  const models = Object.entries(perModel || {});
  if (!models.length) return nothing;
  return html`<section aria-labelledby="models-heading">
    <h2 id="models-heading">Models</h2>
    <div class="table-scroll">
      <table id="job-models">
        <thead><tr><th scope="col">Model</th><th scope="col">Status</th><th scope="col">Records</th><th scope="col">Cost</th><th scope="col">Time</th></tr></thead>
        <tbody>
          ${models.map(
            ([name, m]) => html`<tr>
              <td><code>${name}</code></td>
              <td>${statusBadge(m.status)}${m.failure ? html`<br><small>${m.failure.code}: ${m.failure.reason}</small>` : nothing}</td>
              <td>${formatNumber(m.records_generated)} / ${formatNumber(m.num_records)} (${Number(m.percent).toFixed(0)} %)</td>
              <td>${formatMoney(m.cost)}</td>
              <td>${formatDuration(m.duration_seconds)}</td>
            </tr>`,
          )}
        </tbody>
      </table>
    </div>
  </section>`;
}

function downloadsView(downloads) {
  if (!downloads) return nothing;
  return html`<section aria-labelledby="downloads-heading">
    <h2 id="downloads-heading">Downloads</h2>
    ${downloads.length === 0 ? html`<p aria-busy="true">Preparing the download links…</p>` : nothing}
    <ul id="job-downloads">
      ${downloads.map(({ format, answer, error }) =>
        error
          ? html`<li>${format}: ${errorView(error)}</li>`
          : answer.download_url
            ? html`<li><a href=${answer.download_url} data-format=${format} download>Download ${format}</a> — ${formatNumber(answer.records)} records (link valid 15 min)</li>`
            : html`<li>${format}: ${answer.files.map((file, i) => html`<a href=${file.download_url} data-format=${format} download>part ${i + 1}</a> `)}</li>`,
      )}
    </ul>
  </section>`;
}
