// #/seeds: upload a seed file and read its validation report; the list of the caller's
// seed sets. The file goes straight to the signed URL POST /seed-data/upload grants (the
// API never holds it), with XMLHttpRequest because fetch reports no upload progress.
import { html, render as paint } from "/static/vendor/lit-html.js";
import { api, ApiError } from "../api.js";
import { errorView, formatDate } from "../ui.js";

const ACCEPTED = ".jsonl,.ndjson,.json,.csv,.parquet";

export async function render(root, _params) {
  const state = {
    templates: [],
    templateId: "",
    file: null,
    dragging: false,
    progress: null, // {loaded, total} of the last upload, as XMLHttpRequest reported it
    uploading: false,
    step: null, // what is happening, in words
    report: null,
    error: null,
    seeds: null,
    seedsError: null,
    nextToken: null,
  };
  let upload = null; // the XMLHttpRequest in flight

  const update = () => paint(view(state, actions), root);

  const actions = {
    chooseTemplate(event) {
      state.templateId = event.target.value;
      update();
    },
    pick(event) {
      const [file] = event.target.files;
      if (file) start(file);
    },
    dragOver(event) {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      if (!state.dragging) {
        state.dragging = true;
        update();
      }
    },
    dragLeave() {
      state.dragging = false;
      update();
    },
    drop(event) {
      event.preventDefault();
      state.dragging = false;
      const [file] = event.dataTransfer.files;
      if (file) start(file);
      else update();
    },
    validate: (seedId) => validate(seedId),
    loadMore: () => loadSeeds(true),
  };

  async function start(file) {
    state.file = file;
    state.report = null;
    state.error = null;
    state.progress = { loaded: 0, total: file.size };
    state.uploading = true;
    state.step = `Asking for an upload URL for ${file.name}…`;
    update();
    try {
      const grant = await api("POST", "/seed-data/upload", {
        body: { filename: file.name, size_bytes: file.size },
      });
      state.step = `Uploading ${file.name}…`;
      update();
      await send(file, grant);
      await loadSeeds(false);
      if (state.templateId) await validate(grant.seed_id);
      state.step = `Uploaded ${file.name} (${formatBytes(file.size)}).`;
    } catch (error) {
      state.error = error;
      state.step = null;
      state.progress = null;
    }
    state.uploading = false;
    update();
  }

  function send(file, grant) {
    return new Promise((resolve, reject) => {
      upload = new XMLHttpRequest();
      upload.open(grant.method ?? "PUT", grant.upload_url);
      upload.upload.onprogress = (event) => {
        state.progress = { loaded: event.loaded, total: event.lengthComputable ? event.total : file.size };
        update();
      };
      upload.onload = () => {
        const xhr = upload;
        upload = null;
        if (xhr.status >= 200 && xhr.status < 300) resolve();
        else reject(uploadError(xhr));
      };
      upload.onerror = () => {
        upload = null;
        reject(new Error("The upload failed: the connection was lost."));
      };
      upload.onabort = () => {
        upload = null;
        reject(new Error("The upload was cancelled."));
      };
      upload.send(file);
    });
  }

  async function validate(seedId) {
    if (!state.templateId) {
      state.error = new Error("Choose a template to validate against first.");
      update();
      return;
    }
    state.step = "Validating…";
    state.error = null;
    update();
    try {
      state.report = await api("POST", "/seed-data/validate", {
        body: { seed_id: seedId, template_id: state.templateId },
      });
      state.step = null;
      await loadSeeds(false); // the list shows the status validation recorded (VALIDATED), not the old one
    } catch (error) {
      state.error = error;
      state.step = null;
    }
    update();
    document.getElementById("seed-report")?.focus();
  }

  async function loadSeeds(more) {
    try {
      const query = { limit: 20 };
      if (more && state.nextToken) query.next_token = state.nextToken;
      const page = await api("GET", "/seed-data", { query });
      state.seeds = more ? (state.seeds ?? []).concat(page.items) : page.items;
      state.nextToken = page.next_token ?? null;
      state.seedsError = null;
    } catch (error) {
      state.seedsError = error;
    }
    update();
  }

  update();
  try {
    const page = await api("GET", "/templates", { query: { limit: 100 } });
    state.templates = page.items;
    state.templateId = page.items[0]?.id ?? "";
  } catch (error) {
    state.error = error;
  }
  update();
  await loadSeeds(false);

  return () => upload?.abort();
}

/** The blob route answers the API's error shape; anything else becomes a plain message. */
function uploadError(xhr) {
  try {
    const answer = JSON.parse(xhr.responseText);
    if (answer?.error) {
      const requestId = answer.meta?.request_id ?? xhr.getResponseHeader("X-Request-Id");
      return new ApiError(xhr.status, answer.error.code, answer.error.message, answer.error.details, requestId);
    }
  } catch {
    // not JSON: fall through
  }
  return new Error(`The upload failed (HTTP ${xhr.status}).`);
}

function view(state, actions) {
  return html`
    <hgroup>
      <h1>Seed data</h1>
      <p>Upload a JSONL, JSON, CSV or Parquet file, then see which records miss the fields a template reads.</p>
    </hgroup>
    <section aria-labelledby="upload-title">
      <h2 id="upload-title">Upload and validate</h2>
      <label>
        Validate against template
        <select name="template" @change=${actions.chooseTemplate} .value=${state.templateId}>
          <option value="">— no validation —</option>
          ${state.templates.map(
            (t) => html`<option value=${t.id} ?selected=${t.id === state.templateId}>
              ${t.name} (v${t.version}${t.required_fields.length ? `: ${t.required_fields.join(", ")}` : ""})
            </option>`,
          )}
        </select>
      </label>
      <label
        class="drop-zone ${state.dragging ? "dragging" : ""}"
        @dragover=${actions.dragOver}
        @dragenter=${actions.dragOver}
        @dragleave=${actions.dragLeave}
        @drop=${actions.drop}
      >
        <span><strong>Drop a seed file here</strong> or choose one</span>
        <input type="file" name="seed-file" accept=${ACCEPTED} @change=${actions.pick} ?disabled=${state.uploading} />
      </label>
      ${state.progress
        ? html`<label>
            Upload progress
            <progress value=${state.progress.loaded} max=${state.progress.total || 1}></progress>
          </label>`
        : ""}
      <p id="seed-status" role="status" aria-live="polite">${state.step ?? ""}</p>
      ${state.error ? errorView(state.error) : ""}
      ${state.report ? reportView(state.report, state.templates) : ""}
    </section>
    <section aria-labelledby="seeds-title">
      <h2 id="seeds-title">Your seed sets</h2>
      ${seedList(state, actions)}
    </section>
  `;
}

function reportView(report, templates) {
  const template = templates.find((t) => t.id === report.template_id);
  const unit = report.position_unit;
  const missing = Object.entries(report.missing_counts).filter(([, count]) => count > 0);
  return html`
    <article id="seed-report" tabindex="-1" aria-labelledby="report-title">
      <header>
        <h3 id="report-title" class=${report.valid ? "valid" : "invalid"}>
          ${report.valid ? "✓ Valid" : "✗ Not valid"}: ${report.record_count} record${report.record_count === 1 ? "" : "s"}
          against ${template ? template.name : report.template_id} v${report.template_version}
        </h3>
      </header>
      ${report.file_error ? html`<p class="invalid">The file could not be read: ${report.file_error}</p>` : ""}
      <dl class="report-figures">
        <dt>Records</dt>
        <dd class="record-count">${report.record_count}</dd>
        <dt>Missing a field</dt>
        <dd>${report.invalid_records}</dd>
        <dt>Unreadable</dt>
        <dd>${report.unreadable_records}</dd>
        <dt>Fields the template reads</dt>
        <dd>${report.required_fields.length ? report.required_fields.join(", ") : "none"}</dd>
      </dl>
      ${missing.length
        ? html`<table class="missing-fields">
            <caption>Records missing each field</caption>
            <thead>
              <tr><th scope="col">Field</th><th scope="col">Records missing it</th></tr>
            </thead>
            <tbody>
              ${missing.map(([field, count]) => html`<tr><td><code>${field}</code></td><td>${count}</td></tr>`)}
            </tbody>
          </table>`
        : ""}
      ${report.failing_records.length
        ? html`<table class="failing-records">
            <caption>First failing ${unit}s</caption>
            <thead>
              <tr>
                <th scope="col">${capitalised(unit)}</th>
                <th scope="col">Missing</th>
                <th scope="col">Problem</th>
              </tr>
            </thead>
            <tbody>
              ${report.failing_records.map(
                (r) => html`<tr>
                  <td>${r.position}</td>
                  <td>${r.missing.length ? r.missing.join(", ") : "—"}</td>
                  <td>${r.problem ?? "—"}</td>
                </tr>`,
              )}
            </tbody>
          </table>`
        : ""}
    </article>
  `;
}

function seedList(state, actions) {
  if (state.seedsError) return errorView(state.seedsError);
  if (state.seeds === null) return html`<p aria-busy="true">Loading…</p>`;
  if (!state.seeds.length) return html`<p>No seed sets yet.</p>`;
  return html`
    <div class="overflow-auto narrow-stack">
      <table class="seed-sets">
        <thead>
          <tr>
            <th scope="col">File</th>
            <th scope="col">Format</th>
            <th scope="col">Size</th>
            <th scope="col">Status</th>
            <th scope="col">Records</th>
            <th scope="col">Created</th>
            <th scope="col">Check</th>
          </tr>
        </thead>
        <tbody>
          ${state.seeds.map(
            (s) => html`<tr>
              <td>${s.filename}</td>
              <td data-label="Format">${s.format}</td>
              <td data-label="Size">${s.size_bytes == null ? "—" : formatBytes(s.size_bytes)}</td>
              <td data-label="Status" class="seed-status">${seedStatus(s)}</td>
              <td data-label="Records">${s.records ?? s.record_count ?? "—"}</td>
              <td data-label="Created">${formatDate(s.created_at)}</td>
              <td data-label="Check">
                <button
                  type="button"
                  class="secondary outline small"
                  ?disabled=${!state.templateId}
                  @click=${() => actions.validate(s.seed_id)}
                  aria-label="Validate ${s.filename} against the chosen template"
                >
                  Validate
                </button>
              </td>
            </tr>`,
          )}
        </tbody>
      </table>
    </div>
    ${state.nextToken
      ? html`<button type="button" class="secondary" @click=${actions.loadMore}>Load more</button>`
      : ""}
  `;
}

function seedStatus(seed) {
  const status = seed.status.toLowerCase();
  if (seed.valid === true) return `${status}: valid`;
  if (seed.valid === false) return `${status}: not valid`;
  return status;
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function capitalised(word) {
  return word.charAt(0).toUpperCase() + word.slice(1);
}
