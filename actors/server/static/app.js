// An app's page: for a stream app its activity, channels and timeline; its label queries,
// the live predictions to confirm or correct, how it learned (the curve, recall and
// confusion), its versions, its data, and its spec.
import { get, request } from "./api.js";
import { el, percent, replace } from "./dom.js";
import { renderCounts, testSampleForm, uploadForm } from "./data.js";
import { appForm } from "./forms.js";
import { LiveStream } from "./live.js";
import { placementText, trainingText } from "./overview.js";
import { QueryPanel } from "./queries.js";
import { renderCurve, renderQuality } from "./quality.js";
import { StreamPanel, isStreamApp } from "./stream.js";
import { renderVersions } from "./versions.js";

const POLL_MS = 2000;

export function showApp(main, name, say) {
  const path = `v1/apps/${encodeURIComponent(name)}`;
  const section = (id, title, ...rest) => el("section", { id, "aria-labelledby": `${id}-title` },
    el("h2", { id: `${id}-title` }, title), ...rest);
  const summary = el("div", { class: "card" });
  const streamNode = el("div");  // a stream app's panel; stays empty for the others
  const asked = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  const queries = section("queries", "Label queries", asked);
  const live = el("div");
  const curve = el("div");
  const quality = el("div");
  const versions = el("div");
  const data = el("div");
  const forms = el("div");  // upload and test sample: built once, never re-rendered
  const edit = el("div");
  replace(main, el("p", {}, el("a", { href: "#/" }, "← all apps")), el("h1", {}, name), summary,
          streamNode, queries, section("live", "Live predictions", live),
          section("curve", "How it learned", curve), section("quality", "Per class", quality),
          section("versions", "Versions", versions), section("data", "Data", data, forms),
          section("spec", "Settings", edit));
  const panel = new QueryPanel(asked, name, say, () => refresh(true));
  let streamPanel = null;  // made on the first answer that shows channels
  const stream = new LiveStream(live, name, say, () => refresh(true), () => refresh(),
                                (msg) => streamPanel && streamPanel.activity(msg));
  let stopped = false;
  let seen = "";  // version and feedback count last rendered: heavier views follow them
  let app = null;
  async function refresh(force = false) {
    try {
      const fresh = await get(path);
      if (stopped) return;
      const first = app === null;
      app = fresh;
      if (isStreamApp(app)) {
        streamPanel = streamPanel || new StreamPanel(streamNode, path, say, () => refresh(true));
        streamPanel.update(app);
      }
      renderSummary(summary, app, await statusOf(name));
      stream.setLabels(app.labels);
      await panel.refresh(app.labels);
      const key = `${app.model_version}/${app.n_feedback}/${app.n_samples}`;
      if (force || key !== seen) {
        seen = key;
        const [history, models, q] = await Promise.all([
          get(`${path}/history`), get(`${path}/models`), get(`${path}/quality`)]);
        if (stopped) return;
        renderCurve(curve, history);
        renderQuality(quality, q);
        renderVersions(versions, models, path, app, say, () => refresh(true));
        renderCounts(data, app);
      }
      if (first) {
        replace(forms, uploadForm(app, path, say, () => refresh(true)),
                testSampleForm(app, path, say));
        replace(edit, appForm(app, () => refresh(true), say), deleteButton(app, path, say));
      }
    } catch (exc) {
      if (!stopped) say(exc.message);
    }
  }
  async function poll() {
    await refresh();
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }
  let timer = setTimeout(poll, 0);
  return () => { stopped = true; clearTimeout(timer); stream.close();
                 if (streamPanel) streamPanel.close(); };
}

async function statusOf(name) {
  const status = await get("v1/status");
  return status.apps[name] || {};
}

function renderSummary(node, app, status) {
  replace(node, el("dl", {},
    el("dt", {}, "Data"), el("dd", {}, app.data_type, app.shape ? ` ${app.shape.join("×")}` : ""),
    el("dt", {}, "Version"),
    el("dd", {}, app.model_version === null ? "none yet" : `v${app.model_version}`,
       app.ready ? "" : " (not ready)"),
    el("dt", {}, "Accuracy"),
    el("dd", {}, `validation ${percent(status.accuracy)} · feedback ` +
                 `${percent(app.feedback_accuracy)}`),
    el("dt", {}, "Training"), el("dd", {}, trainingText(status.training || {})),
    el("dt", {}, "Serving"), el("dd", {}, placementText(status.placement))),
    (status.alerts || []).length ? el("ul", { class: "alerts" },
      ...status.alerts.map((x) => el("li", { class: `alert ${x.kind}` }, x.message))) : null);
}

function deleteButton(app, path, say) {
  if (app.owner === "file") return null;
  return el("button", { type: "button", class: "danger", onclick: async () => {
    if (!confirm(`Delete ${app.name} with all its samples and models?`)) return;
    try {
      await request("DELETE", path);
      location.hash = "#/";
    } catch (exc) {
      say(exc.message);
    }
  } }, `Delete ${app.name}`);
}
