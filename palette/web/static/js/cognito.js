// Sign-in on AWS: the Cognito hosted UI, authorization code flow with PKCE (a public client, no
// secret in the page). beginSignIn sends the browser to https://{domain}/oauth2/authorize with a
// fresh verifier's challenge and a state kept in sessionStorage; back on redirect_uri with ?code=,
// finishSignIn trades the code and the verifier for tokens at /oauth2/token and returns the id token,
// which API Gateway's JWT authorizer takes as the bearer (its audience is the client id).
//
// cfg is config.json's sign_in: {mode: "cognito", domain, client_id, redirect_uri, scopes}. `domain`
// is the hosted UI's host name (https is implied) or a full origin such as http://127.0.0.1:9000 (a
// test's fake hosted UI).

const PENDING_KEY = "palette.cognito.pending";

function base64url(bytes) {
  let text = "";
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomText(byteCount) {
  return base64url(crypto.getRandomValues(new Uint8Array(byteCount)));
}

async function challengeOf(verifier) {
  return base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
}

/** The hosted UI's origin: a bare host name is served over https. */
export function hostedUiOrigin(cfg) {
  const domain = String(cfg.domain || "").replace(/\/+$/, "");
  if (!domain) throw new Error("config.json's sign_in has no Cognito domain");
  return domain.includes("://") ? domain : `https://${domain}`;
}

function scopesOf(cfg) {
  const scopes = cfg.scopes ?? ["openid", "email"];
  return Array.isArray(scopes) ? scopes.join(" ") : String(scopes);
}

/** Sends the browser to the hosted UI; it comes back to cfg.redirect_uri with ?code=&state=. */
export async function beginSignIn(cfg) {
  const verifier = randomText(48); // 64 characters, within RFC 7636's 43-128
  const state = randomText(24);
  sessionStorage.setItem(PENDING_KEY, JSON.stringify({ verifier, state }));
  const query = new URLSearchParams({
    response_type: "code",
    client_id: cfg.client_id,
    redirect_uri: cfg.redirect_uri,
    scope: scopesOf(cfg),
    state,
    code_challenge: await challengeOf(verifier),
    code_challenge_method: "S256",
  });
  window.location.assign(`${hostedUiOrigin(cfg)}/oauth2/authorize?${query}`);
}

function claimsOf(jwt) {
  const payload = jwt.split(".")[1] || "";
  const padded = payload.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(payload.length / 4) * 4, "=");
  return JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(padded), (c) => c.charCodeAt(0))));
}

/** Back from the hosted UI: {token, user} for the ?code= in the URL, which it removes. Throws an
 * Error whose message says what went wrong (a state that does not match is refused: the code was
 * not asked for by this tab). */
export async function finishSignIn(cfg) {
  const url = new URL(window.location.href);
  const code = url.searchParams.get("code");
  const returnedState = url.searchParams.get("state");
  const pending = JSON.parse(sessionStorage.getItem(PENDING_KEY) || "null");
  sessionStorage.removeItem(PENDING_KEY);
  url.searchParams.delete("code");
  url.searchParams.delete("state");
  window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  if (!code) throw new Error("The sign-in page sent no authorization code back.");
  if (!pending || pending.state !== returnedState) {
    throw new Error("This sign-in was not started from this tab (its state does not match); sign in again.");
  }
  const response = await fetch(`${hostedUiOrigin(cfg)}/oauth2/token`, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      client_id: cfg.client_id,
      code,
      redirect_uri: cfg.redirect_uri,
      code_verifier: pending.verifier,
    }),
  });
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    // not JSON: the status says what we know
  }
  if (!response.ok || !answer || !answer.id_token) {
    const reason = (answer && (answer.error_description || answer.error)) || `${response.status} ${response.statusText}`;
    throw new Error(`Signing in failed: ${reason}.`);
  }
  const claims = claimsOf(answer.id_token);
  return { token: answer.id_token, user: claims["cognito:username"] || claims.email || claims.sub };
}

/** The hosted UI's /logout, which ends its session and sends the browser back to the site (a
 * LogoutURL of the web client: the shared stack sets it to the WebCallbackUrls, as redirect_uri). */
export function signOutUrl(cfg) {
  const query = new URLSearchParams({ client_id: cfg.client_id, logout_uri: cfg.redirect_uri });
  return `${hostedUiOrigin(cfg)}/logout?${query}`;
}
