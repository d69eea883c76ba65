// A job's live dashboard: GET /jobs/{id}/events read with fetch (EventSource cannot send the bearer
// token) and parsed by eventsource-parser. When the stream ends before the job settles (a restart,
// or AWS, where each request answers one state), it reconnects with Last-Event-ID after the server's
// `retry`, so nothing is skipped. When the stream cannot be had at all (a proxy that buffers, a 503),
// it polls GET /dashboard/{id} every 3 s instead, and tries the stream again each minute.
import { createParser } from "/static/vendor/eventsource-parser.js";
import { api, apiUrl, authHeaders, errorFrom, signedOut } from "./api.js";

export const SETTLED = new Set(["COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELLED", "BUDGET_EXCEEDED"]);
const POLL_MS = 3000;
const STREAM_AGAIN_MS = 60000;
const MAX_RETRY_MS = 30000;

/**
 * Follows job `jobId`: `onDashboard(dashboard, via)` for each state ("stream" or "poll"),
 * `onError(error)` for an answer that ends the following (404, 401). Returns a function that stops
 * it (aborting the open fetch), which the page calls when the user leaves.
 */
export function followJob(jobId, { onDashboard, onError }) {
  const controller = new AbortController();
  const { signal } = controller;
  let lastEventId = null;
  let retryMs = 3000;
  let settled = false;

  const wait = (ms) =>
    new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => clearTimeout(timer), { once: true });
    });

  function deliver(dashboard, via) {
    settled = SETTLED.has(dashboard.status);
    onDashboard(dashboard, via);
  }

  /** One exchange of the stream: "ended" (the server closed it), or throws. */
  async function streamOnce() {
    const headers = { Accept: "text/event-stream", ...authHeaders() };
    if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
    const response = await fetch(apiUrl(`/jobs/${encodeURIComponent(jobId)}/events`), { headers, signal, cache: "no-store" });
    if (response.status === 204) {
      settled = true;
      return "ended";
    }
    if (response.status === 401) signedOut();
    if (!response.ok) throw await errorFrom(response);
    if (!(response.headers.get("content-type") || "").startsWith("text/event-stream") || !response.body) {
      throw new Error("the answer is not an event stream");
    }
    const parser = createParser({
      onEvent(event) {
        if (event.id) lastEventId = event.id;
        if (event.event === "dashboard") deliver(JSON.parse(event.data), "stream");
      },
      onRetry(ms) {
        retryMs = Math.min(ms, MAX_RETRY_MS);
      },
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return "ended";
      parser.feed(value);
    }
  }

  /** Polls the dashboard for a minute (or until the job settles). */
  async function pollAwhile() {
    const until = Date.now() + STREAM_AGAIN_MS;
    while (!signal.aborted && !settled && Date.now() < until) {
      deliver(await api("GET", `/dashboard/${encodeURIComponent(jobId)}`, { signal }), "poll");
      if (!settled) await wait(POLL_MS);
    }
  }

  async function run() {
    while (!signal.aborted && !settled) {
      try {
        await streamOnce();
        if (!settled) await wait(retryMs);
      } catch (error) {
        if (signal.aborted) return;
        if (error.status === 404 || error.status === 401 || error.status === 403) {
          onError(error);
          return;
        }
        try {
          await pollAwhile();
        } catch (pollError) {
          if (signal.aborted) return;
          onError(pollError);
          if (pollError.status === 404 || pollError.status === 401) return;
          await wait(POLL_MS);
        }
      }
    }
  }

  run();
  return () => controller.abort();
}
