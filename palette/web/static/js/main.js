// Boot: read config.json (where the API is, how to sign in), draw the navigation, start the router.
import { html, nothing, render as paint } from "/static/vendor/lit-html.js";
import { clearSession, configure, currentUser, siteConfig, token } from "./api.js";
import { startRouter } from "./router.js";
import { errorView } from "./ui.js";

const LINKS = [
  ["#/jobs", "Jobs", ["jobs", "job"]],
  ["#/jobs/new", "New job", ["new_job"]],
  ["#/templates", "Templates", ["templates", "template"]],
  ["#/seeds", "Seed data", ["seeds"]],
  ["#/costs", "Costs", ["costs"]],
];

function userLabel(user) {
  if (!user) return "";
  return typeof user === "string" ? user : user.username || user.user_id || "";
}

async function signOut() {
  clearSession();
  const signIn = siteConfig().sign_in || {};
  if (signIn.mode === "cognito") {
    // end the hosted UI's session too, or the next "Sign in" would let the same person straight back in
    const { signOutUrl } = await import("./cognito.js");
    window.location.assign(signOutUrl(signIn));
    return;
  }
  window.location.hash = "#/signin";
}

function drawNav(route) {
  const nav = document.getElementById("nav-links");
  if (!token()) {
    paint(nothing, nav);
    return;
  }
  const page = route ? route.page : "";
  paint(
    html`${LINKS.map(
        ([href, label, pages]) =>
          html`<li><a href=${href} aria-current=${pages.includes(page) ? "page" : "false"}>${label}</a></li>`,
      )}
      <li><span class="muted">${userLabel(currentUser())}</span></li>
      <li><button type="button" class="secondary outline" @click=${signOut}>Sign out</button></li>`,
    nav,
  );
}

async function boot() {
  const main = document.getElementById("main");
  try {
    const response = await fetch("/config.json", { cache: "no-cache" });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    configure(await response.json());
  } catch (error) {
    paint(errorView({ message: `Could not read config.json (${error.message}).` }), main);
    return;
  }
  startRouter(main, drawNav);
}

/** "Skip to content" moves focus to <main>; following its href would change the hash, which is a route. */
document.querySelector(".skip-link")?.addEventListener("click", (event) => {
  event.preventDefault();
  document.getElementById("main").focus();
});

boot();
