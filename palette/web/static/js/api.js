// The one way pages talk to the API: JSON in, JSON out, the bearer token from sessionStorage, and
// the API's error shape turned into an ApiError pages can show (errorView in ui.js).

const TOKEN_KEY = "palette.token";
const USER_KEY = "palette.user";

let apiBase = "";
let site = { api_url: "", sign_in: { mode: "password" } };

/** Takes config.json: where the API is ("" is this origin, on `palette serve`; the API's URL on AWS)
 * and how users sign in (sign_in.mode "password" or "cognito"). */
export function configure(config) {
  site = config;
  apiBase = (config.api_url || "").replace(/\/+$/, "");
}

export function siteConfig() {
  return site;
}

export function apiUrl(path) {
  return apiBase + path;
}

export class ApiError extends Error {
  constructor(status, code, message, details = {}, requestId = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
    this.requestId = requestId;
  }
}

/** The signed-in session: the bearer token and the user the sign-in answered (kept per tab). */
export function saveSession(token, user) {
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(USER_KEY, JSON.stringify(user ?? null));
}

export function clearSession() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** The signed-in user's id (POST /auth/login's `user`, the token's sub), or null. */
export function currentUser() {
  if (!token()) return null;
  try {
    return JSON.parse(sessionStorage.getItem(USER_KEY) || "null");
  } catch {
    return null;
  }
}

export function authHeaders() {
  const bearer = token();
  return bearer ? { Authorization: `Bearer ${bearer}` } : {};
}

/** The token was refused (expired, or signed out elsewhere): forget it and ask to sign in again, coming
 * back to this page afterwards. */
export function signedOut() {
  clearSession();
  if (!window.location.hash.startsWith("#/signin")) {
    window.location.hash = `#/signin?next=${encodeURIComponent(window.location.hash || "#/jobs")}`;
  }
}

/** The ApiError for a response that is not ok, from the API's error shape when it has one. */
export async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's page): the status line says what we know
  }
  const error = body && body.error ? body.error : {};
  const requestId = (body && body.meta && body.meta.request_id) || response.headers.get("x-request-id");
  return new ApiError(
    response.status,
    error.code || `HTTP_${response.status}`,
    error.message || `${response.status} ${response.statusText || "error"}`,
    error.details || {},
    requestId,
  );
}

/** Calls the API; answers the parsed JSON (null for 204), throws ApiError. A 401 ends the session
 * and sends the user to the sign-in page. */
export async function api(method, path, { body, query, headers, signal } = {}) {
  const url = new URL(apiUrl(path), window.location.href);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const init = { method, headers: { Accept: "application/json", ...authHeaders(), ...(headers || {}) }, signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (cause) {
    if (cause.name === "AbortError") throw cause;
    throw new ApiError(0, "NETWORK_ERROR", `The API did not answer (${cause.message}).`);
  }
  if (response.status === 401 && path !== "/auth/login") signedOut();
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}
