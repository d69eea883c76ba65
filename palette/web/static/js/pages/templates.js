// #/templates: the caller's templates, then other owners' public ones (GET /templates
// answers them in that order, each part by name), paged with the API's next_token.
import { html, render as paint } from "/static/vendor/lit-html.js";
import { api, currentUser } from "../api.js";
import { errorView, formatDate } from "../ui.js";

export async function render(root, _params) {
  const state = { items: [], nextToken: null, error: null, loading: true };
  const me = userName(currentUser());

  const update = () => paint(view(state, me, loadMore), root);

  async function loadMore() {
    state.loading = true;
    update();
    try {
      const query = { limit: 50 };
      if (state.nextToken) query.next_token = state.nextToken;
      const page = await api("GET", "/templates", { query });
      state.items = state.items.concat(page.items);
      state.nextToken = page.next_token ?? null;
      state.error = null;
    } catch (error) {
      state.error = error;
    }
    state.loading = false;
    update();
  }

  await loadMore();
}

/** The signed-in user's name, whatever shape currentUser() gives it in. */
export function userName(user) {
  if (!user) return null;
  if (typeof user === "string") return user;
  return user.username ?? user.user_id ?? user.name ?? user.id ?? null;
}

function view(state, me, loadMore) {
  const own = state.items.filter((t) => t.owner === me);
  const shared = state.items.filter((t) => t.owner !== me);
  return html`
    <hgroup>
      <h1>Templates</h1>
      <p>Prompt templates you can run jobs with: yours, and those others made public.</p>
    </hgroup>
    <p><a href="#/templates/new" role="button">New template</a></p>
    ${state.error ? errorView(state.error) : ""}
    <section aria-labelledby="own-templates">
      <h2 id="own-templates">Yours</h2>
      ${own.length
        ? templateTable(own, false)
        : html`<p>${state.loading ? "Loading…" : "You have no templates yet."}</p>`}
    </section>
    <section aria-labelledby="public-templates">
      <h2 id="public-templates">Public</h2>
      ${shared.length
        ? templateTable(shared, true)
        : html`<p>${state.loading ? "Loading…" : "No other user has published a template."}</p>`}
    </section>
    ${state.nextToken
      ? html`<button type="button" class="secondary" aria-busy=${String(state.loading)} @click=${loadMore}>
          Load more
        </button>`
      : ""}
  `;
}

function templateTable(items, showOwner) {
  return html`
    <div class="overflow-auto narrow-stack">
      <table>
        <thead>
          <tr>
            <th scope="col">Name</th>
            ${showOwner ? html`<th scope="col">Owner</th>` : ""}
            <th scope="col">Version</th>
            <th scope="col">Steps</th>
            <th scope="col">Reads</th>
            <th scope="col">Visibility</th>
            <th scope="col">Updated</th>
          </tr>
        </thead>
        <tbody>
          ${items.map(
            (t) => html`
              <tr>
                <td><a href="#/templates/${encodeURIComponent(t.id)}">${t.name}</a></td>
                ${showOwner ? html`<td data-label="Owner">${t.owner}</td>` : ""}
                <td data-label="Version">v${t.version}</td>
                <td data-label="Steps">${t.step_count}</td>
                <td data-label="Reads">${t.required_fields.length ? t.required_fields.join(", ") : "—"}</td>
                <td data-label="Visibility">${t.is_public ? "public" : "private"}</td>
                <td data-label="Updated">${formatDate(t.updated_at)}</td>
              </tr>
            `,
          )}
        </tbody>
      </table>
    </div>
  `;
}
