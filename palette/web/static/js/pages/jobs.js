// #/jobs: the caller's jobs, newest first, with a status filter and paging by next_token
// (`#/jobs?status=RUNNING&limit=50`).
import { html, nothing, render as paint } from "/static/vendor/lit-html.js";
import { api } from "../api.js";
import { errorView, formatDate, formatMoney, formatNumber, statusBadge } from "../ui.js";

const STATUSES = ["QUEUED", "RUNNING", "COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELLED", "BUDGET_EXCEEDED"];

/** A job id's first characters: enough to tell jobs apart at a glance (the link's title and label carry it whole). */
const shortId = (id) => (id.length > 13 ? `${id.slice(0, 12)}…` : id);

export async function render(root, params) {
  const state = { items: [], nextToken: null, error: null, loading: false, status: params.status || "" };
  const controller = new AbortController();
  const pageSize = Math.min(Math.max(Number(params.limit) || 20, 1), 100); // #/jobs?limit=N
  let latest = 0; // a filter changed while a page loaded: only the newest answer is shown

  async function load(more) {
    const asked = ++latest;
    state.loading = true;
    update();
    try {
      const query = { limit: pageSize, status: state.status, next_token: more ? state.nextToken : null };
      const page = await api("GET", "/jobs", { query, signal: controller.signal });
      if (asked !== latest) return;
      state.items = more ? state.items.concat(page.items) : page.items;
      state.nextToken = page.next_token ?? null;
      state.error = null;
    } catch (error) {
      if (error.name === "AbortError" || asked !== latest) return;
      state.error = error;
    }
    state.loading = false;
    update();
  }

  function filter(event) {
    state.status = event.target.value;
    state.items = [];
    state.nextToken = null;
    const query = new URLSearchParams({ ...(state.status && { status: state.status }), ...(params.limit && { limit: params.limit }) });
    const hash = query.size ? `#/jobs?${query}` : "#/jobs";
    window.history.replaceState(null, "", hash);
    load(false);
  }

  const update = () =>
    paint(
      html`<hgroup>
          <h1>Jobs</h1>
          <p>Your generation jobs, newest first.</p>
        </hgroup>
        <div class="actions">
          <a href="#/jobs/new" role="button">New job</a>
          <label for="status-filter" class="muted">Status</label>
          <select id="status-filter" @change=${filter}>
            <option value="" ?selected=${!state.status}>All</option>
            ${STATUSES.map((s) => html`<option value=${s} ?selected=${s === state.status}>${s.replaceAll("_", " ").toLowerCase()}</option>`)}
          </select>
        </div>
        ${errorView(state.error)}
        ${!state.loading && !state.error && state.items.length === 0
          ? html`<p id="no-jobs">No jobs${state.status ? " with this status" : ""} yet. <a href="#/jobs/new">Start one</a>.</p>`
          : nothing}
        ${state.items.length
          ? html`<div class="table-scroll narrow-stack">
              <table id="jobs-table">
                <thead>
                  <tr><th scope="col">Job</th><th scope="col">Status</th><th scope="col">Records</th><th scope="col">Cost</th><th scope="col">Budget</th><th scope="col">Created</th></tr>
                </thead>
                <tbody>
                  ${state.items.map(
                    (job) => html`<tr data-job-id=${job.job_id}>
                      <td class="job-id"><a href="#/jobs/${encodeURIComponent(job.job_id)}" title=${job.job_id} aria-label="Job ${job.job_id}"><code>${shortId(job.job_id)}</code></a></td>
                      <td data-label="Status">${statusBadge(job.status)}</td>
                      <td data-label="Records">${formatNumber(job.records_generated)} / ${formatNumber(job.num_records)}</td>
                      <td data-label="Cost">${formatMoney(job.cost_estimate)}</td>
                      <td data-label="Budget">${formatMoney(job.budget_limit)}</td>
                      <td data-label="Created">${formatDate(job.created_at)}</td>
                    </tr>`,
                  )}
                </tbody>
              </table>
            </div>`
          : nothing}
        ${state.nextToken
          ? html`<button type="button" class="secondary" id="more-jobs" @click=${() => load(true)} aria-busy=${state.loading ? "true" : "false"}>Load more</button>`
          : nothing}
        ${state.loading && !state.items.length ? html`<p aria-busy="true">Loading jobs…</p>` : nothing}`,
      root,
    );

  await load(false);
  return () => controller.abort();
}
