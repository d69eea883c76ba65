// Hash routes to page modules: `#/jobs/<id>?x=1` loads pages/job.js and calls its render(root, params)
// with params {id, x: "1", query: {x: "1"}}. A page may return a cleanup function, called when the
// user navigates away (to abort its fetches). Routing by hash keeps page paths apart from API paths.
import { render as paint } from "/static/vendor/lit-html.js";
import { token } from "./api.js";
import { errorView } from "./ui.js";

const ROUTES = [
  [/^\/signin$/, "signin"],
  [/^\/jobs$/, "jobs"],
  [/^\/jobs\/new$/, "new_job"],
  [/^\/jobs\/(?<id>[^/]+)$/, "job"],
  [/^\/templates$/, "templates"],
  [/^\/templates\/new$/, "template"],
  [/^\/templates\/(?<id>[^/]+)$/, "template"],
  [/^\/seeds$/, "seeds"],
  [/^\/costs$/, "costs"],
];

/** The page name and params of a location hash, or null when no route matches. */
export function match(hash) {
  const [path, search = ""] = (hash.replace(/^#/, "") || "/jobs").split("?");
  const query = Object.fromEntries(new URLSearchParams(search));
  for (const [pattern, page] of ROUTES) {
    const found = pattern.exec(path);
    if (found) {
      const captures = Object.fromEntries(
        Object.entries(found.groups || {}).map(([name, value]) => [name, decodeURIComponent(value)]),
      );
      return { page, path, params: { ...query, ...captures, query } };
    }
  }
  return null;
}

export function startRouter(main, onNavigate) {
  let cleanup = null;

  async function navigate() {
    if (typeof cleanup === "function") {
      try {
        cleanup();
      } catch (error) {
        console.error(error);
      }
    }
    cleanup = null;
    const route = match(window.location.hash);
    if (route && route.page !== "signin" && !token()) {
      window.location.hash = `#/signin?next=${encodeURIComponent(window.location.hash || "#/jobs")}`;
      return;
    }
    // Each page paints into a fresh element: a page still loading when the user moves on paints
    // into a detached node, never over the next page.
    const root = document.createElement("div");
    root.className = "page";
    main.replaceChildren(root);
    onNavigate(route);
    if (!route) {
      paint(errorView({ code: "NOT_FOUND", message: `No page at ${window.location.hash}.` }), root);
      return;
    }
    try {
      const module = await import(`./pages/${route.page}.js`);
      const result = await module.render(root, route.params);
      if (root.isConnected) cleanup = result;
      else if (typeof result === "function") result();
    } catch (error) {
      console.error(error);
      paint(errorView(error), root);
    }
  }

  window.addEventListener("hashchange", navigate);
  navigate();
}
