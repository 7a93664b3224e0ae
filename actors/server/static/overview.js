// The overview: every app (what it learned, how it trains, where it serves, what needs a look)
// and the machines. Polls /v1/status every 2 s while shown.
import { get } from "./api.js";
import { ago, el, percent, replace } from "./dom.js";
import { appForm } from "./forms.js";

const POLL_MS = 2000;

export function showOverview(main, say) {
  const apps = el("section", { class: "apps", "aria-label": "Apps" });
  const machines = el("section", { class: "machines", "aria-labelledby": "machines-title" });
  replace(main, el("h1", {}, "Apps"), apps,
          el("details", { class: "card" }, el("summary", {}, "New app"),
             appForm(null, (name) => { location.hash = `#/app/${encodeURIComponent(name)}`; },
                     say)),
          el("h2", { id: "machines-title" }, "Machines"), machines);
  let stopped = false;
  async function poll() {
    try {
      const status = await get("v1/status");
      if (stopped) return;
      const name = document.getElementById("daemon-name");
      const local = status.machines.find((m) => m.local);
      if (name && local) replace(name, local.name);
      renderApps(apps, status.apps);
      renderMachines(machines, status);
    } catch (exc) {
      if (!stopped) say(exc.message);
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }
  let timer = setTimeout(poll, 0);
  return () => { stopped = true; clearTimeout(timer); };
}

function renderApps(node, apps) {
  const names = Object.keys(apps);
  if (!names.length) {
    replace(node, el("p", { class: "muted" }, "No apps yet: create one below, or declare it " +
                                               "in the config file."));
    return;
  }
  replace(node, ...names.map((name) => appCard(name, apps[name])));
}

function appCard(name, a) {
  const policy = a.policy || {};
  const training = a.training || {};
  const counts = Object.entries(a.class_counts || {});
  const most = Math.max(1, ...counts.map(([, n]) => n));
  return el("article", { class: "card app", "aria-label": `App ${name}` },
    el("h3", {}, el("a", { href: `#/app/${encodeURIComponent(name)}` }, name),
       el("span", { class: "muted" }, ` ${a.data_type}`)),
    el("p", { class: "muted" },
       `${policy.mode || ""} · ${policy.latency_ms ?? "–"} ms · at most ${policy.max_models ?? "–"} models`),
    el("dl", {},
       el("dt", {}, "Version"),
       el("dd", {}, a.model_version === null ? "none yet" : `v${a.model_version}`,
          " ", ...(a.members || []).map((m) => el("span", { class: "chip" }, m))),
       el("dt", {}, "Accuracy"),
       el("dd", {}, `validation ${percent(a.accuracy)} · feedback ${percent(a.feedback_accuracy)}`,
          a.n_feedback_recent ? el("span", { class: "muted" }, ` (last ${a.n_feedback_recent})`) : null),
       el("dt", {}, "Samples"),
       el("dd", {}, `${a.n_samples}`, el("ul", { class: "bars" }, ...counts.map(([label, n]) =>
         el("li", {}, bar((100 * n) / most), el("span", {}, `${label}: ${n}`))))),
       el("dt", {}, "Training"),
       el("dd", {}, trainingText(training),
          training.last_error ? el("div", { class: "error" }, training.last_error) : null),
       el("dt", {}, "Serving"),
       el("dd", {}, placementText(a.placement))),
    (a.alerts || []).length ? el("ul", { class: "alerts", "aria-label": "Alerts" },
      ...a.alerts.map((x) => el("li", { class: `alert ${x.kind}` }, x.message))) : null);
}

function bar(percent) {
  const node = el("span", { class: "bar" });
  node.style.width = `${percent}%`;  // through the CSSOM: the page's CSP allows no inline style
  return node;
}

export function trainingText(t) {
  if (!t.training) return t.last_reason ? `idle (last run: ${t.last_reason})` : "idle";
  const progress = t.planned ? `, ${t.fitted}/${t.planned} families` : "";
  return `training (${t.last_reason})${progress}, ${ago(t.elapsed_s)}` +
         (t.fitting_on ? ` on ${t.fitting_on}` : "");
}

export function placementText(p) {
  if (!p) return "–";
  if (p.serving === null) return `not served: ${p.reason}`;
  return `on ${p.serving}` + (p.members ? ` (best ${p.members} members)` : "");
}

function renderMachines(node, status) {
  const lag = status.loop_lag_ms || {};
  replace(node,
    el("p", {}, `Loop lag p50 ${lag.p50} ms, p99 ${lag.p99} ms · up ${ago(status.uptime_s)} · ` +
                `config v${status.config_version}` +
                (status.restart_required ? " · restart required" : "")),
    el("table", {},
      el("caption", { class: "sr-only" }, "Machines"),
      el("thead", {}, el("tr", {}, ...["machine", "up", "CPU", "memory", "RTT", "serving"]
        .map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...status.machines.map((m) => el("tr", {},
        el("td", {}, m.name, m.local ? el("span", { class: "muted" }, " (this one)") : null),
        el("td", { class: m.up ? "ok" : "error" }, m.up ? "up" : `down${m.error ? `: ${m.error}` : ""}`),
        el("td", {}, m.cpu_percent === null || m.cpu_percent === undefined ? "–" : `${Math.round(m.cpu_percent)} %`),
        el("td", {}, m.memory_percent === null || m.memory_percent === undefined ? "–" : `${Math.round(m.memory_percent)} %`),
        el("td", {}, m.rtt_ms === null || m.rtt_ms === undefined ? "–" : `${m.rtt_ms} ms`),
        el("td", {}, (m.placed || []).join(", ")))))));
}

