// Shared bits of every page: the error view and the formats of money, durations and dates.
import { html, nothing } from "/static/vendor/lit-html.js";

/** An error as the user should see it: the API's message, its code and the request id to quote. */
export function errorView(error) {
  if (!error) return nothing;
  const message = error.message || String(error);
  return html`<div class="error-box" role="alert">
    <strong>${error.code ? `${error.code}: ` : ""}</strong>${message}
    ${error.requestId ? html`<div class="request-id">Request id: <code>${error.requestId}</code></div>` : nothing}
  </div>`;
}

const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 4 });
const cents = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumSignificantDigits: 2 });

/** US dollars with cents, and a cost under a cent to two significant digits (so $0.00004 is not $0.00). */
export function formatMoney(value) {
  if (value === null || value === undefined || value === "") return "—";
  const amount = Number(value);
  return amount !== 0 && Math.abs(amount) < 0.01 ? cents.format(amount) : money.format(amount);
}

/** Seconds as "1 h 2 min", "3 min 4 s" or "5 s". */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "—";
  let left = Math.max(0, Math.round(Number(seconds)));
  const hours = Math.floor(left / 3600);
  left -= hours * 3600;
  const minutes = Math.floor(left / 60);
  const secs = left - minutes * 60;
  if (hours) return `${hours} h ${minutes} min`;
  if (minutes) return `${minutes} min ${secs} s`;
  return `${secs} s`;
}

/** An ISO timestamp in the reader's locale, or "—". */
export function formatDate(value) {
  if (!value) return "—";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

export function formatNumber(value) {
  if (value === null || value === undefined) return "—";
  return Number(value).toLocaleString("en-US");
}

/** A job's status as a word in a badge (colour is never the only signal). */
export function statusBadge(status) {
  return html`<span class="status status-${status}">${String(status || "").replaceAll("_", " ").toLowerCase()}</span>`;
}
