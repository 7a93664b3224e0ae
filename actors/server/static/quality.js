// How an app learned: accuracy of every version ever published against time (validation, and
// the corrections people sent on its predictions), with its reason; and per-class recall and
// confusion on validation data and on feedback.
import { el, percent, replace, svg, time } from "./dom.js";

const W = 640, H = 220, PAD = 36;

export function renderCurve(node, history) {
  if (!history.length) {
    replace(node, el("p", { class: "muted" }, "No version yet."));
    return;
  }
  const t0 = history[0].created, t1 = Math.max(history[history.length - 1].created, t0 + 1);
  const values = history.flatMap((v) => [v.metrics.val_accuracy, v.feedback_accuracy])
    .filter((x) => x !== null && x !== undefined);
  const lo = Math.max(0, Math.min(...values, 1) - 0.05);
  const x = (t) => PAD + ((W - 2 * PAD) * (t - t0)) / (t1 - t0);
  const y = (a) => H - PAD - ((H - 2 * PAD) * (a - lo)) / (1 - lo);
  const line = (key, cls) => {
    const points = history.filter((v) => key(v) !== null && key(v) !== undefined)
      .map((v) => `${x(v.created).toFixed(1)},${y(key(v)).toFixed(1)}`);
    return points.length ? svg("polyline", { points: points.join(" "), class: cls }) : null;
  };
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "curve",
                             "aria-label": "Accuracy of each version against time" },
    svg("line", { x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD, class: "axis" }),
    svg("text", { x: 2, y: y(1) + 4, class: "tick" }, "100 %"),
    svg("text", { x: 2, y: y(lo) + 4, class: "tick" }, percent(lo)),
    line((v) => v.metrics.val_accuracy, "validation"),
    line((v) => v.feedback_accuracy, "feedback"),
    ...history.map((v, i) => svg("g", { class: `marker ${v.reason}` },
      svg("circle", { cx: x(v.created), cy: y(v.metrics.val_accuracy ?? lo), r: 4 }),
      // labels alternate above and below their marker: versions come in quick succession
      svg("text", { x: x(v.created) + 5, y: y(v.metrics.val_accuracy ?? lo) + (i % 2 ? 16 : -7) },
          `v${v.version} ${v.reason}`))));
  replace(node, chart,
    el("p", { class: "legend" }, el("span", { class: "validation" }, "— validation"), " ",
       el("span", { class: "feedback" }, "— feedback")),
    el("ol", { class: "history", "aria-label": "Versions published" },
      ...history.slice().reverse().map((v) => el("li", {},
        `v${v.version} · ${v.reason} · ${time(v.created)} · validation ` +
        `${percent(v.metrics.val_accuracy)}` +
        (v.feedback_accuracy === null ? "" : ` · feedback ${percent(v.feedback_accuracy)}`) +
        ` · ${(v.members || []).join(", ")}`))));
}

export function renderQuality(node, q) {
  const classes = q.classes || [];
  if (!classes.length) {
    replace(node, el("p", { class: "muted" }, "No model yet."));
    return;
  }
  const recall = el("table", {},
    el("caption", {}, "Recall per class"),
    el("thead", {}, el("tr", {}, ...["class", "validation", "feedback"]
      .map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...classes.map((c, i) => el("tr", {}, el("th", { scope: "row" }, c),
      el("td", {}, percent(q.validation.recall ? q.validation.recall[i] : null)),
      el("td", {}, percent(q.feedback.recall ? q.feedback.recall[i] : null))))));
  replace(node, recall,
    confusion("Confusion on validation data", classes, q.validation.confusion),
    confusion(`Confusion on feedback (${q.feedback.n} corrections and confirmations)`, classes,
              q.feedback.confusion));
}

function confusion(title, classes, matrix) {
  if (!matrix) return el("p", { class: "muted" }, `${title}: none yet.`);
  return el("table", { class: "confusion" },
    el("caption", {}, title, el("span", { class: "muted" }, " (rows: true, columns: predicted)")),
    el("thead", {}, el("tr", {}, el("td"), ...classes.map((c) => el("th", { scope: "col" }, c)))),
    el("tbody", {}, ...matrix.map((row, i) => el("tr", {}, el("th", { scope: "row" }, classes[i]),
      ...row.map((n, j) => el("td", { class: i === j ? "diag" : n ? "off" : "" }, n))))));
}
