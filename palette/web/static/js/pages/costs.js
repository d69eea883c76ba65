// #/costs: the caller's spend per UTC day and per model (GET /costs?group_by=day|model) as
// Chart.js charts, each with the same figures as a table for screen readers, and the totals
// exactly as the API returns them (fixed-point USD strings, never rounded here).
import { html, render as paint } from "/static/vendor/lit-html.js";
import { api } from "../api.js";
import { errorView } from "../ui.js";

const CATEGORIES = [
  ["model_tokens", "Model tokens"],
  ["compute", "Compute"],
  ["storage", "Storage"],
];
const COLOURS = { model_tokens: "#1e88e5", compute: "#f4511e", storage: "#43a047" };
const AXIS_MONEY = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumSignificantDigits: 3 });
let chartLibrary = null; // one <script> for the whole page's life

export async function render(root, params) {
  const query = params?.query ?? {};
  const state = { from: query.from ?? "", to: query.to ?? "", byDay: null, byModel: null, error: null };
  const charts = [];

  const update = () => paint(view(state, reload), root);

  async function reload(event) {
    event?.preventDefault();
    state.error = null;
    const range = {};
    if (state.from) range.from = state.from;
    if (state.to) range.to = state.to;
    try {
      const [byDay, byModel] = await Promise.all([
        api("GET", "/costs", { query: { ...range, group_by: "day" } }),
        api("GET", "/costs", { query: { ...range, group_by: "model" } }),
      ]);
      state.byDay = byDay;
      state.byModel = byModel;
    } catch (error) {
      state.error = error;
    }
    update();
    await drawCharts();
  }

  async function drawCharts() {
    charts.splice(0).forEach((chart) => chart.destroy());
    if (!state.byDay?.groups.length) return;
    let Chart;
    try {
      Chart = await loadChartLibrary();
    } catch {
      return; // the tables below each chart still show every figure
    }
    const day = root.querySelector("#costs-per-day");
    const model = root.querySelector("#costs-per-model");
    if (day) charts.push(new Chart(day, perDayChart(state.byDay)));
    if (model) charts.push(new Chart(model, perModelChart(state.byModel)));
  }

  update();
  await reload();
  return () => charts.forEach((chart) => chart.destroy());
}

/** Chart.js's UMD build, which sets the global `Chart`, loaded once. */
function loadChartLibrary() {
  if (window.Chart) return Promise.resolve(window.Chart);
  chartLibrary ??= new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = "/static/vendor/chart.umd.js";
    script.onload = () => resolve(window.Chart);
    script.onerror = () => {
      chartLibrary = null;
      reject(new Error("the chart library did not load"));
    };
    document.head.append(script);
  });
  return chartLibrary;
}

/** An axis label in dollars, never in exponent notation (Chart.js's default for tiny amounts). */
function axisMoney(value) {
  return AXIS_MONEY.format(value);
}

function perDayChart(reply) {
  return {
    type: "bar",
    data: {
      labels: reply.groups.map((g) => g.key),
      datasets: CATEGORIES.map(([key, label]) => ({
        label,
        data: reply.groups.map((g) => Number(g[key])),
        backgroundColor: COLOURS[key],
        maxBarThickness: 64,
      })),
    },
    options: {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      scales: { x: { stacked: true }, y: { stacked: true, ticks: { callback: axisMoney } } },
      plugins: { tooltip: { callbacks: { label: (item) => `${item.dataset.label}: $${item.raw}` } } },
    },
  };
}

function perModelChart(reply) {
  const groups = reply.groups.filter((g) => Number(g.total) > 0);
  return {
    type: "bar",
    data: {
      labels: groups.map((g) => g.key),
      datasets: [{ label: "Total (USD)", data: groups.map((g) => Number(g.total)), backgroundColor: "#5e35b1", maxBarThickness: 40 }],
    },
    options: {
      indexAxis: "y",
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      scales: { x: { ticks: { callback: axisMoney } } },
      plugins: { legend: { display: false } },
    },
  };
}

function view(state, reload) {
  return html`
    <hgroup>
      <h1>Costs</h1>
      <p>What your jobs, prompt enhancements and dry runs cost, in USD, as the ledger recorded it.</p>
    </hgroup>
    <form class="grid cost-range" @submit=${reload}>
      <label>
        From (UTC day)
        <input type="date" name="from" .value=${state.from} @input=${(e) => (state.from = e.target.value)} />
      </label>
      <label>
        To (UTC day)
        <input type="date" name="to" .value=${state.to} @input=${(e) => (state.to = e.target.value)} />
      </label>
      <button type="submit">Show</button>
    </form>
    ${state.error ? errorView(state.error) : ""}
    ${state.byDay ? totalsView(state.byDay.totals) : html`<p aria-busy="true">Loading…</p>`}
    ${state.byDay ? perDayView(state.byDay) : ""} ${state.byModel ? perModelView(state.byModel) : ""}
  `;
}

function usd(amount) {
  return `$${amount}`;
}

function totalsView(totals) {
  return html`
    <section aria-labelledby="totals-title">
      <h2 id="totals-title">Totals</h2>
      <div class="overflow-auto narrow-stack">
      <table class="cost-totals">
        <thead>
          <tr>
            ${CATEGORIES.map(([, label]) => html`<th scope="col">${label}</th>`)}
            <th scope="col">Total</th>
          </tr>
        </thead>
        <tbody>
          <tr>
            ${CATEGORIES.map(([key, label]) => html`<td data-category=${key} data-label=${label}>${usd(totals[key])}</td>`)}
            <td data-category="total" data-label="Total"><strong>${usd(totals.total)}</strong></td>
          </tr>
        </tbody>
      </table>
      </div>
    </section>
  `;
}

function perDayView(reply) {
  if (!reply.groups.length) return html`<p>Nothing was charged in this range.</p>`;
  return html`
    <section aria-labelledby="per-day-title">
      <h2 id="per-day-title">Per day</h2>
      <figure>
        <div class="chart-box">
          <canvas
            id="costs-per-day"
            role="img"
            aria-label="Bar chart of the cost per UTC day by category; the table below lists the same figures"
          ></canvas>
        </div>
        <figcaption>Cost per UTC day, stacked by category.</figcaption>
      </figure>
      ${groupTable(reply.groups, "Day", "per-day")}
    </section>
  `;
}

function perModelView(reply) {
  if (!reply.groups.length) return "";
  return html`
    <section aria-labelledby="per-model-title">
      <h2 id="per-model-title">Per model</h2>
      <figure>
        <div class="chart-box">
          <canvas
            id="costs-per-model"
            role="img"
            aria-label="Bar chart of the cost per model; the table below lists the same figures"
          ></canvas>
        </div>
        <figcaption>
          Each model's token cost; <code>unattributed</code> is what no model's tokens account for (compute, storage,
          written-off budget).
        </figcaption>
      </figure>
      ${groupTable(reply.groups, "Model", "per-model")}
    </section>
  `;
}

function groupTable(groups, keyLabel, name) {
  return html`
    <div class="overflow-auto narrow-stack">
      <table class="cost-groups ${name}">
        <thead>
          <tr>
            <th scope="col">${keyLabel}</th>
            ${CATEGORIES.map(([, label]) => html`<th scope="col">${label}</th>`)}
            <th scope="col">Total</th>
          </tr>
        </thead>
        <tbody>
          ${groups.map(
            (g) => html`<tr>
              <th scope="row">${g.key ?? "—"}</th>
              ${CATEGORIES.map(([key, label]) => html`<td data-label=${label}>${usd(g[key])}</td>`)}
              <td data-label="Total">${usd(g.total)}</td>
            </tr>`,
          )}
        </tbody>
      </table>
    </div>
  `;
}
