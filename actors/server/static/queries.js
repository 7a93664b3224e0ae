// Label queries: the predictions the models are least sure of, most informative first. Each
// shows its sample (fetched with the token, so it works with protect_reads), its likeliest
// labels as one-click answers, a picker for any other class, and Skip (never asked again).
import { get, request, requestBlob } from "./api.js";
import { el, percent, replace } from "./dom.js";

const MAX_VALUES = 64;  // a sensor window's numbers: the first ones, not thousands

export class QueryPanel {
  constructor(node, app, say, onAnswer) {
    this.node = node;
    this.app = app;
    this.say = say;
    this.onAnswer = onAnswer;
    this.shown = null;  // what is drawn: redrawn only when it changes (previews, pickers)
    this.path = `v1/apps/${encodeURIComponent(app)}`;
  }

  async refresh(labels) {
    const { queries } = await get(`${this.path}/queries`);
    const key = JSON.stringify([queries.map((q) => q.id), labels]);
    if (key === this.shown) return;
    this.shown = key;
    if (!queries.length) {
      replace(this.node, el("p", { class: "muted" }, "None open: the models are sure enough."));
      return;
    }
    replace(this.node, el("ol", { class: "queries" },
      ...queries.map((q) => this.item(q, labels))));
  }

  item(q, labels) {
    const preview = el("div", { class: "preview" }, "…");
    this.preview(q, preview);
    const outcome = el("span", { class: "outcome", "aria-live": "polite" });
    const answer = async (label) => {
      try {
        await request("POST", `${this.path}/feedback`, { prediction_id: q.prediction_id, label });
        replace(outcome, `answered ${label}`);
        this.onAnswer();
      } catch (exc) {
        this.say(exc.message);
      }
    };
    const skip = async () => {
      try {
        await request("DELETE", `${this.path}/queries/${encodeURIComponent(q.id)}`);
        replace(outcome, "skipped");
        this.onAnswer();
      } catch (exc) {
        this.say(exc.message);
      }
    };
    const others = labels.filter((l) => !q.candidates.some((c) => c.label === l));
    const picker = el("select", { "aria-label": `Other label for query ${q.id}` },
      ...others.map((l) => el("option", { value: l }, l)));
    return el("li", { "data-query": q.id },
      preview,
      el("p", {}, `Margin ${percent(q.margin)} · asked ${new Date(q.created * 1000)
        .toLocaleTimeString()}`),
      el("div", { class: "teach" },
        ...q.candidates.map((c) => el("button", { type: "button", onclick: () => answer(c.label),
                                                  "aria-label": `Answer ${c.label} for query ${q.id}` },
                                      `${c.label} (${percent(c.share)})`)),
        others.length ? picker : null,
        others.length ? el("button", { type: "button", onclick: () => answer(picker.value) },
                           "Answer") : null,
        el("button", { type: "button", class: "secondary", onclick: skip,
                       "aria-label": `Skip query ${q.id}` }, "Skip"),
        outcome));
  }

  async preview(q, node) {
    try {
      const { blob, type } = await requestBlob(
        `${this.path}/queries/${encodeURIComponent(q.id)}/preview`);
      const url = URL.createObjectURL(blob);
      if (type.startsWith("image/")) {
        replace(node, el("img", { src: url, alt: `Sample of query ${q.id}` }));
      } else if (type.startsWith("audio/")) {
        replace(node, el("audio", { src: url, controls: true,
                                    "aria-label": `Sound of query ${q.id}` }));
      } else {
        URL.revokeObjectURL(url);
        const { shape, values } = JSON.parse(await blob.text());
        const flat = values.flat(Infinity);
        replace(node, el("code", { "aria-label": `Values of query ${q.id}` },
          `[${shape.join("×")}] ${flat.slice(0, MAX_VALUES).join(", ")}` +
          (flat.length > MAX_VALUES ? ", …" : "")));
      }
    } catch (exc) {
      replace(node, el("span", { class: "muted" }, `no preview (${exc.message})`));
    }
  }
}
