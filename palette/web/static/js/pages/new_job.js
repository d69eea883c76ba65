// #/jobs/new: start a job (POST /jobs) from a template and a seed set, with its record count, budget,
// output formats and, for a fan-out, its models. `?template=<id>&seed=<id>` preselects them.
import { html, nothing, render as paint } from "/static/vendor/lit-html.js";
import { api } from "../api.js";
import { errorView } from "../ui.js";

const FORMATS = ["JSONL", "PARQUET", "CSV"];

async function everyPage(path) {
  const items = [];
  let nextToken = null;
  do {
    const page = await api("GET", path, { query: { limit: 100, next_token: nextToken } });
    items.push(...page.items);
    nextToken = page.next_token ?? null;
  } while (nextToken && items.length < 500);
  return items;
}

/** The API's field errors as "field: message" lines under its message. */
function fieldErrors(error) {
  const errors = (error && error.details && error.details.errors) || [];
  if (!errors.length) return nothing;
  return html`<ul id="job-form-errors">
    ${errors.map((e) => html`<li><code>${e.field ?? (e.loc || []).join(".")}</code>: ${e.message ?? e.msg}</li>`)}
  </ul>`;
}

export async function render(root, params) {
  const state = { templates: [], seeds: null, seedsError: null, error: null, busy: false };
  const results = await Promise.allSettled([everyPage("/templates"), everyPage("/seed-data")]);
  if (results[0].status === "rejected") {
    paint(html`<h1>New job</h1>${errorView(results[0].reason)}`, root);
    return;
  }
  state.templates = results[0].value;
  if (results[1].status === "fulfilled") state.seeds = results[1].value;
  else state.seedsError = results[1].reason;

  async function submit(event) {
    event.preventDefault();
    const form = new FormData(event.target);
    const body = {
      template_id: form.get("template_id"),
      num_records: Number(form.get("num_records")),
      budget_limit: String(form.get("budget_limit")),
      output_format: form.getAll("output_format"),
    };
    const seed = String(form.get("seed_id") || "").trim();
    if (seed) body.seed_id = seed;
    const models = String(form.get("models") || "")
      .split(/[\s,]+/)
      .filter(Boolean);
    if (models.length) body.models = models;
    state.busy = true;
    state.error = null;
    update();
    try {
      const job = await api("POST", "/jobs", { body });
      window.location.hash = `#/jobs/${encodeURIComponent(job.job_id)}`;
    } catch (error) {
      state.error = error;
      state.busy = false;
      update();
    }
  }

  const update = () =>
    paint(
      html`<h1>New job</h1>
        ${errorView(state.error)} ${fieldErrors(state.error)}
        ${state.templates.length === 0
          ? html`<p>You have no templates yet: <a href="#/templates/new">create one</a> first.</p>`
          : nothing}
        <form id="new-job" @submit=${submit}>
          <label for="job-template">Template</label>
          <select id="job-template" name="template_id" required>
            ${state.templates.map(
              (t) => html`<option value=${t.id} ?selected=${t.id === params.template}>
                ${t.name} (v${t.version}${t.owner ? `, ${t.owner}` : ""})
              </option>`,
            )}
          </select>
          ${seedPicker(state, params)}
          <div class="grid">
            <div>
              <label for="job-records">Records</label>
              <input id="job-records" name="num_records" type="number" min="1" max="1000000" step="1" value="100" required>
            </div>
            <div>
              <label for="job-budget">Budget limit (USD)</label>
              <input id="job-budget" name="budget_limit" type="number" min="0.000001" max="1000" step="any" value="1.00" required>
            </div>
          </div>
          <fieldset>
            <legend>Output formats</legend>
            ${FORMATS.map(
              (f) => html`<label for="format-${f}">
                <input type="checkbox" id="format-${f}" name="output_format" value=${f} ?checked=${f === "JSONL"}>${f}
              </label>`,
            )}
          </fieldset>
          <label for="job-models">Models (optional)</label>
          <input id="job-models" name="models" placeholder="openai/model-a, bedrock/model-b" aria-describedby="job-models-help">
          <small id="job-models-help">Up to 5 <code>provider/model-id</code>, separated by commas: each makes the whole
            dataset (a fan-out). Empty: every step's own model.</small>
          <button type="submit" id="start-job" ?disabled=${state.busy || state.templates.length === 0} aria-busy=${state.busy ? "true" : "false"}>Start job</button>
        </form>`,
      root,
    );
  update();
}

function seedPicker(state, params) {
  if (state.seeds === null) {
    return html`<label for="job-seed">Seed set id</label>
      <input id="job-seed" name="seed_id" value=${params.seed || ""} aria-describedby="job-seed-help">
      <small id="job-seed-help">The seed sets could not be listed (${state.seedsError ? state.seedsError.message : ""}); type a
        seed id, or leave it empty for a template that reads no seed field.</small>`;
  }
  return html`<label for="job-seed">Seed set</label>
    <select id="job-seed" name="seed_id">
      <option value="">None (the template reads no seed field)</option>
      ${state.seeds.map(
        (s) => html`<option value=${s.seed_id} ?selected=${s.seed_id === params.seed}>
          ${s.filename || s.seed_id}${s.records != null ? ` — ${s.records} records` : ""}${s.status ? ` (${s.status})` : ""}
        </option>`,
      )}
    </select>`;
}
