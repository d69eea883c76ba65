// #/jobs/new: start a job (POST /jobs) from a template and a seed set, with its record count, budget,
// output formats and, for a fan-out, its models; its data-quality options (lineage, call cache, dedup)
// and an optional quality judge. `?template=<id>&seed=<id>` preselects them. The API's field errors show
// next to their field (and all of them in a list under its message).
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

/** The API's problems with `field` (or a part of it, e.g. `judge.criteria.0`), one line; `exact` only the field. */
function problemsWith(error, field, exact = false) {
  const errors = (error && error.details && error.details.errors) || [];
  return errors
    .filter((e) => e.field === field || (!exact && String(e.field || "").startsWith(`${field}.`)))
    .map((e) => e.message ?? e.msg)
    .join("; ");
}

/** The field's error, shown under it (`id` is what the input's aria-describedby names). */
function fieldError(error, field, id, exact = false) {
  const message = problemsWith(error, field, exact);
  return message ? html`<small class="field-error" id=${id}>${message}</small>` : nothing;
}

/** aria-invalid for an input whose field the API refused (Pico marks it red, the message says why). */
const invalid = (error, field) => (problemsWith(error, field) ? "true" : nothing);

/** The judge's options from the form, or null when no judge model is given (no judge). */
function judgeOptions(form) {
  const model = String(form.get("judge_model") || "").trim();
  if (!model) return null;
  const judge = {
    model,
    rubric: String(form.get("judge_rubric") || ""),
    criteria: String(form.get("judge_criteria") || "")
      .split(/[\s,]+/)
      .filter(Boolean),
  };
  const amount = String(form.get("judge_sample_value") || "").trim();
  if (amount && form.get("judge_sample") === "rate") judge.sample_rate = Number(amount);
  if (amount && form.get("judge_sample") === "size") judge.sample_size = Number(amount);
  const minScore = String(form.get("judge_min_score") || "").trim();
  if (minScore) judge.min_score = Number(minScore);
  return judge;
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
  state.templateId = state.templates.some((t) => t.id === params.template) ? params.template : (state.templates[0]?.id ?? "");
  state.seedId = params.seed || defaultSeed(state);

  function chooseTemplate(event) {
    state.templateId = event.target.value;
    state.seedId = defaultSeed(state);
    update();
    // an option the user picked keeps its selectedness over ?selected: set the choice itself
    const picker = root.querySelector("select#job-seed");
    if (picker) picker.value = state.seedId;
  }

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
    body.lineage = form.get("lineage") === "on";
    if (form.get("cache") === "on") body.cache = true;
    if (form.get("dedup")) body.dedup = form.get("dedup");
    const judge = judgeOptions(form);
    if (judge) body.judge = judge;
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
          <select id="job-template" name="template_id" required @change=${chooseTemplate}>
            ${state.templates.map(
              (t) => html`<option value=${t.id} ?selected=${t.id === state.templateId}>
                ${t.name} (v${t.version}${t.owner ? `, ${t.owner}` : ""})
              </option>`,
            )}
          </select>
          ${seedPicker(state, (event) => (state.seedId = event.target.value))}
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
          ${qualityOptions(state.error)} ${judgeFields(state.error)}
          <button type="submit" id="start-job" ?disabled=${state.busy || state.templates.length === 0} aria-busy=${state.busy ? "true" : "false"}>Start job</button>
        </form>`,
      root,
    );
  update();
}

/** The seed fields the chosen template reads (none: it needs no seed set). */
function fieldsRead(state) {
  const template = state.templates.find((t) => t.id === state.templateId);
  return (template && template.required_fields) || [];
}

/** A template that reads seed fields starts on the newest validated seed set (the list is newest first). */
function defaultSeed(state) {
  if (!fieldsRead(state).length || !state.seeds) return "";
  return state.seeds.find((s) => s.status === "VALIDATED")?.seed_id ?? "";
}

function seedPicker(state, choose) {
  const fields = fieldsRead(state);
  if (state.seeds === null) {
    return html`<label for="job-seed">Seed set id</label>
      <input id="job-seed" name="seed_id" value=${state.seedId} ?required=${fields.length > 0} aria-describedby="job-seed-help">
      <small id="job-seed-help">The seed sets could not be listed (${state.seedsError ? state.seedsError.message : ""}); type a
        seed id, or leave it empty for a template that reads no seed field.</small>`;
  }
  const validated = state.seeds.some((s) => s.status === "VALIDATED");
  return html`<label for="job-seed">Seed set</label>
    <select id="job-seed" name="seed_id" ?required=${fields.length > 0} aria-describedby="job-seed-help" @change=${choose}>
      <option value="" ?selected=${!state.seedId}>${fields.length ? "Choose a seed set" : "None (the template reads no seed field)"}</option>
      ${state.seeds.map(
        (s) => html`<option value=${s.seed_id} ?selected=${s.seed_id === state.seedId}>
          ${s.filename || s.seed_id}${s.records != null ? ` — ${s.records} records` : ""}${s.status ? ` (${s.status})` : ""}
        </option>`,
      )}
    </select>
    <small id="job-seed-help">${fields.length
      ? html`This template reads the seed fields <code>${fields.join(", ")}</code>: it needs a seed set that has them.
          ${validated ? nothing : html`You have no validated seed set yet: <a href="#/seeds">upload and validate one</a>.`}`
      : "This template reads no seed field: a seed set is optional."}</small>`;
}

function qualityOptions(error) {
  return html`<fieldset id="quality-options">
    <legend>Data quality</legend>
    <label for="job-lineage">
      <input type="checkbox" id="job-lineage" name="lineage" checked aria-describedby="job-lineage-help" aria-invalid=${invalid(error, "lineage")}>Lineage
    </label>
    <small id="job-lineage-help">Each record says where it came from: seed row, template version, models, tokens, cost and its
      record id.</small>
    ${fieldError(error, "lineage", "job-lineage-error")}
    <label for="job-cache">
      <input type="checkbox" id="job-cache" name="cache" aria-describedby="job-cache-help" aria-invalid=${invalid(error, "cache")}>Call cache
    </label>
    <small id="job-cache-help">A model call one of your jobs made before is answered from your cache: no call, billed $0.</small>
    ${fieldError(error, "cache", "job-cache-error")}
    <label for="job-dedup">Dedup</label>
    <select id="job-dedup" name="dedup" aria-describedby="job-dedup-help job-dedup-error" aria-invalid=${invalid(error, "dedup")}>
      <option value="">None</option>
      <option value="exact">Exact: the same text</option>
      <option value="near">Near: alike wording</option>
    </select>
    <small id="job-dedup-help">A duplicate of a kept record is dropped and made again from another seed row: the job still
      ends with its record count.</small>
    ${fieldError(error, "dedup", "job-dedup-error")}
  </fieldset>`;
}

/** A share or a number of records to judge needs its value: the browser asks for it before sending. */
function needAmount(event) {
  event.target.form.elements.judge_sample_value.required = Boolean(event.target.value);
}

/** The optional judge, folded away until opened (or until the API refuses one of its fields). */
function judgeFields(error) {
  const refused = Boolean(problemsWith(error, "judge"));
  return html`<details id="judge-options" ?open=${refused}>
    <summary>Quality judge (optional)</summary>
    <fieldset>
      <legend class="muted"><small>A model scores records 1 (worst) to 5 (best) on each criterion of your rubric.</small></legend>
      ${fieldError(error, "judge", "judge-error", true)}
      <label for="judge-model">Judge model</label>
      <input id="judge-model" name="judge_model" placeholder="openai/gpt-4o-mini" aria-describedby="judge-model-help judge-model-error" aria-invalid=${invalid(error, "judge.model")}>
      <small id="judge-model-help">A priced <code>provider/model-id</code>. Empty: no judge.</small>
      ${fieldError(error, "judge.model", "judge-model-error")}
      <label for="judge-rubric">Rubric</label>
      <textarea id="judge-rubric" name="judge_rubric" rows="4" aria-describedby="judge-rubric-help judge-rubric-error" aria-invalid=${invalid(error, "judge.rubric")}></textarea>
      <small id="judge-rubric-help">A Jinja prompt with the record's seed fields and <code>{{ steps.&lt;id&gt;.output }}</code>.</small>
      ${fieldError(error, "judge.rubric", "judge-rubric-error")}
      <label for="judge-criteria">Criteria</label>
      <input id="judge-criteria" name="judge_criteria" placeholder="accuracy, fluency" aria-describedby="judge-criteria-help judge-criteria-error" aria-invalid=${invalid(error, "judge.criteria")}>
      <small id="judge-criteria-help">1 to 8 names (lowercase letters, digits, _), separated by commas.</small>
      ${fieldError(error, "judge.criteria", "judge-criteria-error")}
      <div class="grid">
        <div>
          <label for="judge-sample">Records judged</label>
          <select id="judge-sample" name="judge_sample" aria-describedby="judge-sample-error" @change=${needAmount}>
            <option value="">Every record</option>
            <option value="rate">A share of them (0-1)</option>
            <option value="size">A number of them</option>
          </select>
          ${fieldError(error, "judge.sample_rate", "judge-sample-error")} ${fieldError(error, "judge.sample_size", "judge-sample-error")}
        </div>
        <div>
          <label for="judge-sample-value">Share or number</label>
          <input id="judge-sample-value" name="judge_sample_value" type="number" min="0" step="any" aria-invalid=${invalid(error, "judge.sample_rate") === "true" || invalid(error, "judge.sample_size") === "true" ? "true" : nothing}>
        </div>
        <div>
          <label for="judge-min-score">Minimum mean score</label>
          <input id="judge-min-score" name="judge_min_score" type="number" min="1" max="5" step="any" aria-describedby="judge-min-score-help judge-min-score-error" aria-invalid=${invalid(error, "judge.min_score")}>
          <small id="judge-min-score-help">Optional: a record scored below it is dropped and made again.</small>
          ${fieldError(error, "judge.min_score", "judge-min-score-error")}
        </div>
      </div>
    </fieldset>
  </details>`;
}
