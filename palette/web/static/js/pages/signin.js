// #/signin: a user name and password (POST /auth/login) on `palette serve`; the Cognito hosted UI
// (js/cognito.js) when config.json's sign_in.mode is "cognito". Either way the page keeps the bearer
// token in sessionStorage and returns to where the user was going (?next=).
import { html, render as paint } from "/static/vendor/lit-html.js";
import { api, saveSession, siteConfig } from "../api.js";
import { errorView } from "../ui.js";

function destination(params) {
  const next = params.next || "#/jobs";
  return next.startsWith("#/") && !next.startsWith("#/signin") ? next : "#/jobs";
}

export async function render(root, params) {
  const config = siteConfig();
  if (config.sign_in && config.sign_in.mode === "cognito") return cognito(root, params, config.sign_in);

  const state = { error: null, busy: false };

  async function submit(event) {
    event.preventDefault();
    const form = new FormData(event.target);
    state.busy = true;
    state.error = null;
    update();
    try {
      const answer = await api("POST", "/auth/login", {
        body: { username: String(form.get("username")).trim(), password: String(form.get("password")) },
      });
      saveSession(answer.token, answer.user ?? { username: String(form.get("username")).trim() });
      window.location.hash = destination(params);
    } catch (error) {
      state.error =
        error.status === 429
          ? Object.assign(error, { message: `${error.message} (too many attempts: wait, then try again)` })
          : error;
      state.busy = false;
      update();
    }
  }

  const update = () =>
    paint(
      html`<article class="signin">
        <h1>Sign in</h1>
        ${errorView(state.error)}
        <form id="signin" @submit=${submit}>
          <label for="signin-username">User name</label>
          <input id="signin-username" name="username" autocomplete="username" required autofocus>
          <label for="signin-password">Password</label>
          <input id="signin-password" name="password" type="password" autocomplete="current-password" required>
          <button type="submit" aria-busy=${state.busy ? "true" : "false"} ?disabled=${state.busy}>Sign in</button>
        </form>
        <p class="muted"><small>Users are created with <code>palette user create NAME</code>.</small></p>
      </article>`,
      root,
    );
  update();
}

/** The Cognito hosted UI: back from it with ?code=, finish; otherwise offer to go there. */
async function cognito(root, params, signIn) {
  const { beginSignIn, finishSignIn } = await import("../cognito.js");
  const returned = new URLSearchParams(window.location.search);
  let failure = null;
  if (returned.has("code")) {
    try {
      const answer = await finishSignIn(signIn);
      saveSession(answer.token ?? answer, answer.user ?? null);
      // finishSignIn took the code out of the URL; leaving #/signin for the destination fires hashchange
      window.history.replaceState(null, "", window.location.pathname + window.location.hash);
      window.location.hash = destination(params);
      return;
    } catch (error) {
      failure = error; // shown above the button, so the user can start over
    }
  } else if (returned.has("error")) {
    failure = { message: returned.get("error_description") || returned.get("error") };
    window.history.replaceState(null, "", window.location.pathname + window.location.hash);
  }
  paint(
    html`<article class="signin">
      <h1>Sign in</h1>
      ${errorView(failure)}
      <button type="button" @click=${() => beginSignIn(signIn)}>Sign in with your Palette account</button>
    </article>`,
    root,
  );
}
