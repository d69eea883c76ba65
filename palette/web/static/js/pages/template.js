// #/templates/new and #/templates/<id>: the template editor. One textarea per step; while
// the user types, the API's own analysis (POST /templates/analysis, nothing saved) flags
// Jinja syntax errors with their line and lists the seed fields the prompts read, so the
// page never carries a second template parser. Saving creates (POST) or publishes the next
// version (PUT); an owner sees the versions and may delete, with the API's 409 explained.
import { html, render as paint } from "/static/vendor/lit-html.js";
import { api, apiUrl, authHeaders, currentUser, errorFrom } from "../api.js";
import { errorView, formatDate } from "../ui.js";
import { userName } from "./templates.js";

const ANALYSIS_DELAY_MS = 400;
const DEFAULT_MODEL = "local/gemma-3-270m"; // the model the embedded runtime ships

export async function render(root, params) {
  const templateId = params.id && params.id !== "new" ? params.id : null;
  const version = params.query?.version; // an older version, shown to read or to restore
  const me = userName(currentUser());
  const state = {
    templateId,
    loaded: null, // the template as GET answered it (null while creating)
    form: { name: "", description: "", is_public: false, tags: "", note: "", steps: [blankStep(1)] },
    analysis: null, // {valid, errors, required_fields} or {unavailable: error}
    analysing: false,
    versions: null,
    saving: false,
    saved: null, // a sentence after a save
    error: null, // an ApiError from loading, saving or deleting
    deleteProblem: null, // the 409's explanation
    importError: null,
  };
  let timer = null;
  let pending = null; // the AbortController of the analysis in flight
  let asked = 0; // answers to older requests than the latest are dropped

  const update = () => paint(view(state, me, actions), root);

  const actions = {
    edit(change) {
      change(state.form);
      state.saved = null;
      update();
      scheduleAnalysis();
    },
    addStep() {
      actions.edit((form) => form.steps.push(blankStep(form.steps.length + 1)));
    },
    removeStep(index) {
      actions.edit((form) => form.steps.splice(index, 1));
    },
    save,
    remove,
    importDocument,
  };

  function scheduleAnalysis() {
    clearTimeout(timer);
    timer = setTimeout(analyse, ANALYSIS_DELAY_MS);
  }

  async function analyse() {
    pending?.abort();
    pending = new AbortController();
    const mine = ++asked;
    state.analysing = true;
    update();
    try {
      const answer = await api("POST", "/templates/analysis", {
        body: requestBody(state.form, false),
        signal: pending.signal,
      });
      if (mine !== asked) return;
      state.analysis = answer;
    } catch (error) {
      if (mine !== asked || error?.name === "AbortError") return;
      state.analysis = { unavailable: error };
    }
    state.analysing = false;
    update();
  }

  async function save(event) {
    event.preventDefault();
    state.saving = true;
    state.error = null;
    update();
    try {
      if (state.templateId) {
        const body = requestBody(state.form, true);
        const saved = await api("PUT", `/templates/${encodeURIComponent(state.templateId)}`, { body });
        if (version) {
          location.hash = `#/templates/${encodeURIComponent(state.templateId)}`;
          return;
        }
        state.loaded = saved;
        state.form.note = "";
        state.saved = `Saved as version ${saved.version}.`;
        await loadVersions();
      } else {
        const saved = await api("POST", "/templates", { body: requestBody(state.form, false) });
        state.saving = false;
        location.hash = `#/templates/${encodeURIComponent(saved.id)}`;
        return;
      }
    } catch (error) {
      state.error = error;
    }
    state.saving = false;
    update();
  }

  /** POST /templates/import: a YAML (or JSON) document as GET /templates/{id}/export writes it. */
  async function importDocument(event) {
    event.preventDefault();
    const text = new FormData(event.target).get("document");
    state.importError = null;
    update();
    try {
      const response = await fetch(apiUrl("/templates/import"), {
        method: "POST",
        headers: { ...authHeaders(), Accept: "application/json", "Content-Type": "application/yaml" },
        body: text,
      });
      if (!response.ok) throw await errorFrom(response);
      const saved = await response.json();
      location.hash = `#/templates/${encodeURIComponent(saved.id)}`;
    } catch (error) {
      state.importError = error;
      update();
    }
  }

  async function remove() {
    if (!confirm(`Delete the template "${state.loaded.name}" and all its versions?`)) return;
    state.error = null;
    state.deleteProblem = null;
    try {
      await api("DELETE", `/templates/${encodeURIComponent(state.templateId)}`);
      location.hash = "#/templates";
      return;
    } catch (error) {
      if (error.status === 409 && error.details && "jobs_using" in error.details) {
        state.deleteProblem = error.details;
      } else {
        state.error = error;
      }
    }
    update();
    root.querySelector(".delete-refused, .error-box")?.scrollIntoView({ block: "center" });
  }

  async function loadVersions() {
    const answer = await api("GET", `/templates/${encodeURIComponent(state.templateId)}/versions`);
    state.versions = answer.items;
  }

  if (templateId) {
    try {
      const query = version ? { version } : {};
      const loaded = await api("GET", `/templates/${encodeURIComponent(templateId)}`, { query });
      state.loaded = loaded;
      state.form = formOf(loaded);
      await loadVersions();
    } catch (error) {
      state.error = error;
    }
  }
  update();
  if (state.loaded) analyse(); // a new template is checked once the user types

  return () => {
    clearTimeout(timer);
    pending?.abort();
  };
}

function blankStep(n) {
  return { id: n === 1 ? "answer" : `step_${n}`, model: DEFAULT_MODEL, prompt: "", parameters: {} };
}

function formOf(template) {
  return {
    name: template.name,
    description: template.description,
    is_public: template.is_public,
    tags: template.tags.join(", "),
    note: "",
    steps: template.steps.map((s) => ({ ...s })),
  };
}

/** The body of POST /templates (and of the analysis), or of PUT with its change note. */
function requestBody(form, revision) {
  const body = {
    name: form.name.trim() || "Untitled",
    description: form.description,
    is_public: form.is_public,
    tags: form.tags
      .split(",")
      .map((tag) => tag.trim())
      .filter(Boolean),
    steps: form.steps.map((s) => {
      const step = { id: s.id, model: s.model, prompt: s.prompt };
      if (s.parameters && Object.keys(s.parameters).length) step.parameters = s.parameters;
      if (s.output_schema) step.output_schema = s.output_schema;
      return step;
    }),
  };
  if (revision && form.note.trim()) body.note = form.note.trim();
  return body;
}

function view(state, me, actions) {
  const { loaded, form } = state;
  const editable = !loaded || loaded.owner === me;
  const title = loaded ? loaded.name : "New template";
  if (state.templateId && !loaded) {
    return html`<h1>Template</h1>
      ${state.error ? errorView(state.error) : html`<p aria-busy="true">Loading…</p>`}
      <p><a href="#/templates">Back to templates</a></p>`;
  }
  return html`
    <nav aria-label="breadcrumb">
      <ul>
        <li><a href="#/templates">Templates</a></li>
        <li>${title}</li>
      </ul>
    </nav>
    <hgroup>
      <h1>${title}</h1>
      ${loaded
        ? html`<p>
            Version ${loaded.version} of ${loaded.latest_version} · ${loaded.is_public ? "public" : "private"} · owner
            ${loaded.owner}${loaded.forked_from ? ` · forked from ${loaded.forked_from.template_id}` : ""}
          </p>
          ${loaded.version < loaded.latest_version && editable
            ? html`<p>Saving publishes this version's text as version ${loaded.latest_version + 1}.</p>`
            : ""}`
        : html`<p>Write each step's prompt; the fields it reads and any syntax error show as you type.</p>`}
    </hgroup>
    <form @submit=${actions.save} aria-describedby="template-analysis">
      <fieldset ?disabled=${!editable}>
        <label>
          Name
          <input
            name="name"
            required
            maxlength="200"
            .value=${form.name}
            @input=${(e) => actions.edit((f) => (f.name = e.target.value))}
          />
        </label>
        <label>
          Description
          <textarea
            name="description"
            rows="2"
            .value=${form.description}
            @input=${(e) => actions.edit((f) => (f.description = e.target.value))}
          ></textarea>
        </label>
        <div class="grid">
          <label>
            Tags <small>(comma-separated lowercase words)</small>
            <input
              name="tags"
              .value=${form.tags}
              @input=${(e) => actions.edit((f) => (f.tags = e.target.value))}
            />
          </label>
          <label class="checkbox-label">
            <input
              type="checkbox"
              role="switch"
              name="is_public"
              .checked=${form.is_public}
              @change=${(e) => actions.edit((f) => (f.is_public = e.target.checked))}
            />
            Public: every user can see and run it
          </label>
        </div>
        ${form.steps.map((step, index) => stepEditor(step, index, form.steps.length, state, actions))}
        <button type="button" class="secondary outline" @click=${actions.addStep}>Add a step</button>
        ${analysisView(state)}
        ${loaded
          ? html`<label>
              Change note <small>(one line, shown in the versions list)</small>
              <input
                name="note"
                maxlength="200"
                .value=${form.note}
                @input=${(e) => actions.edit((f) => (f.note = e.target.value))}
              />
            </label>`
          : ""}
        ${state.error ? errorView(state.error) : ""}
        ${state.saved ? html`<p role="status" class="notice">✓ ${state.saved}</p>` : ""}
        <button type="submit" aria-busy=${String(state.saving)}>${loaded ? "Save a new version" : "Create template"}</button>
      </fieldset>
    </form>
    ${loaded ? "" : importView(state, actions)}
    ${loaded && !editable ? html`<p>This template is ${loaded.owner}'s: you can read it and run jobs with it.</p>` : ""}
    ${state.versions ? versionsView(state.versions, loaded) : ""}
    ${loaded && editable ? deleteView(state, actions) : ""}
  `;
}

function stepEditor(step, index, count, state, actions) {
  const prefix = `step-${index}`;
  const problems = (state.analysis?.errors ?? []).filter((p) => p.step_id === step.id);
  return html`
    <article class="template-step" aria-labelledby="${prefix}-title">
      <header>
        <strong id="${prefix}-title">Step ${index + 1}</strong>
        ${count > 1
          ? html`<button
              type="button"
              class="secondary outline small"
              @click=${() => actions.removeStep(index)}
              aria-label="Remove step ${index + 1}"
            >
              Remove
            </button>`
          : ""}
      </header>
      <div class="grid">
        <label>
          Step id
          <input
            name="${prefix}-id"
            required
            pattern="[A-Za-z_][A-Za-z0-9_]*"
            .value=${step.id}
            @input=${(e) => actions.edit(() => (step.id = e.target.value))}
          />
        </label>
        <label>
          Model <small>(provider/model-id)</small>
          <input
            name="${prefix}-model"
            required
            .value=${step.model}
            @input=${(e) => actions.edit(() => (step.model = e.target.value))}
          />
        </label>
      </div>
      <label>
        Prompt <small>(Jinja: <code>{{ field }}</code> reads a seed field, <code>{{ steps.id.output }}</code> an earlier step)</small>
        <textarea
          name="${prefix}-prompt"
          class="prompt"
          rows="6"
          spellcheck="false"
          aria-invalid=${problems.length ? "true" : "false"}
          aria-describedby="${prefix}-problems"
          .value=${step.prompt}
          @input=${(e) => actions.edit(() => (step.prompt = e.target.value))}
        ></textarea>
      </label>
      <ul id="${prefix}-problems" class="problems">
        ${problems.map((p) => html`<li>${problemText(p)}</li>`)}
      </ul>
    </article>
  `;
}

function problemText(problem) {
  const where = problem.line != null ? `Line ${problem.line}: ` : problem.field ? `${problem.field}: ` : "";
  return `⚠ ${where}${problem.message}`;
}

function analysisView(state) {
  const { analysis } = state;
  let body;
  if (!analysis) {
    body = html`<p>${state.analysing ? "Checking…" : "Write a prompt: it is checked as you type."}</p>`;
  } else if (analysis.unavailable) {
    body = html`<p>The template could not be checked:</p>
      ${errorView(analysis.unavailable)}`;
  } else {
    const unplaced = (analysis.errors ?? []).filter((p) => !p.step_id);
    body = html`
      <p class=${analysis.valid ? "valid" : "invalid"}>
        ${analysis.valid ? "✓ The template is valid." : `⚠ ${analysis.errors.length} problem${analysis.errors.length === 1 ? "" : "s"} to fix before saving.`}
      </p>
      ${unplaced.length ? html`<ul class="problems">${unplaced.map((p) => html`<li>${problemText(p)}</li>`)}</ul>` : ""}
      <p>
        Seed fields it reads:
        ${analysis.required_fields?.length
          ? html`<span class="required-fields">${analysis.required_fields.map((f) => html`<code>${f}</code> `)}</span>`
          : html`<span class="required-fields">none</span>`}
      </p>
    `;
  }
  return html`<section id="template-analysis" aria-live="polite" aria-busy=${String(state.analysing)}>
    <h2>Check</h2>
    ${body}
  </section>`;
}

function importView(state, actions) {
  return html`
    <details class="import-document" ?open=${!!state.importError}>
      <summary>Or import a whole template as a YAML or JSON document</summary>
      <form @submit=${actions.importDocument}>
        <label>
          Document <small>(as a template's export writes it: name, description, tags, steps)</small>
          <textarea name="document" rows="10" spellcheck="false" required></textarea>
        </label>
        ${state.importError ? errorView(state.importError) : ""}
        <button type="submit" class="secondary">Import</button>
      </form>
    </details>
  `;
}

function versionsView(versions, shown) {
  const link = (v) => `#/templates/${encodeURIComponent(shown.id)}?version=${v}`;
  return html`
    <section aria-labelledby="versions-title">
      <h2 id="versions-title">Versions</h2>
      <div class="overflow-auto">
        <table class="versions">
          <thead>
            <tr>
              <th scope="col">Version</th>
              <th scope="col">Recorded</th>
              <th scope="col">By</th>
              <th scope="col">Note</th>
              <th scope="col">Jobs</th>
            </tr>
          </thead>
          <tbody>
            ${[...versions].reverse().map(
              (v) => html`<tr>
                <td>
                  ${v.version === shown.version
                    ? html`<strong aria-current="page">v${v.version} (shown)</strong>`
                    : html`<a href=${link(v.version)}>v${v.version}</a>`}
                </td>
                <td>${formatDate(v.created_at)}</td>
                <td>${v.created_by}</td>
                <td>${v.note || "—"}</td>
                <td>${v.job_count}</td>
              </tr>`,
            )}
          </tbody>
        </table>
      </div>
    </section>
  `;
}

function deleteView(state, actions) {
  const problem = state.deleteProblem;
  return html`
    <section aria-labelledby="delete-title">
      <h2 id="delete-title">Delete</h2>
      ${problem
        ? html`<div role="alert" class="error-box delete-refused">
            <p>
              This template cannot be deleted: ${problem.jobs_using} job${problem.jobs_using === 1 ? "" : "s"} still
              use${problem.jobs_using === 1 ? "s" : ""} it. Delete those jobs first (a finished job's data goes with it).
            </p>
            ${problem.job_ids?.length
              ? html`<p>
                  Yours:
                  ${problem.job_ids.map((id) => html`<a href="#/jobs/${encodeURIComponent(id)}">${id}</a> `)}
                </p>`
              : html`<p>None of them is yours: the template stays while other users' jobs use it.</p>`}
          </div>`
        : ""}
      <button type="button" class="secondary" @click=${actions.remove}>Delete this template</button>
    </section>
  `;
}
