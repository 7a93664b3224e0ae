// The live predictions of an app, from every channel (the stream's watch mode, capped at what
// the page draws), each with one click to confirm it or to correct it with a class picker.
import { request, stream } from "./api.js";
import { el, replace, time } from "./dom.js";

const MAX_PER_S = 10;  // the page never asks for more than it can draw
const ROWS = 30;
const RETRY_MS = 3000;

export class LiveStream {
  constructor(node, app, say, onTraining, onQuery, onActivity = () => {}) {
    this.app = app;
    this.say = say;
    this.onTraining = onTraining;
    this.onQuery = onQuery;  // a label query opened or closed
    this.onActivity = onActivity;  // a stream app's activity changed: its panel shows it
    this.labels = [];
    this.skipped = 0;
    this.info = el("p", { class: "muted" }, "Connecting…");
    this.training = el("p", { class: "muted", "aria-live": "polite" });
    this.rows = el("tbody");
    replace(node, this.info, this.training, el("table", { class: "live" },
      el("caption", { class: "sr-only" }, "Live predictions"),
      el("thead", {}, el("tr", {}, ...["time", "label", "confidence", "stage", "channel", ""]
        .map((h) => el("th", { scope: "col" }, h)))), this.rows));
    this.closed = false;
    this.open();
  }

  setLabels(labels) { this.labels = labels || []; }

  open() {
    this.ws = stream(this.app, { watch: true, maxPerS: MAX_PER_S },
                     (msg) => this.receive(msg), () => this.reconnect());
    this.ws.onopen = () => replace(this.info, "Watching every channel.");
  }

  reconnect() {
    if (this.closed) return;
    replace(this.info, "Disconnected; reconnecting…");
    setTimeout(() => { if (!this.closed) this.open(); }, RETRY_MS);
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close();
  }

  receive(msg) {
    if (msg.type === "prediction") {
      this.skipped += msg.skipped || 0;
      this.rows.prepend(this.row(msg));
      while (this.rows.children.length > ROWS) this.rows.lastChild.remove();
      if (this.skipped) replace(this.info, `Watching every channel; ${this.skipped} ` +
                                           "predictions not shown (more than the page draws).");
    } else if (msg.type === "event" && msg.kind.startsWith("label_query")) {
      this.onQuery();
    } else if (msg.type === "event" && msg.kind === "activity") {
      this.onActivity(msg);  // not a training event
    } else if (msg.type === "event") {
      replace(this.training, `Training: ${msg.kind.replaceAll("_", " ")}` +
                             (msg.version ? ` v${msg.version}` : "") +
                             (msg.reason ? ` (${msg.reason})` : ""));
      if (msg.kind === "version_published" || msg.kind === "retraining_finished") {
        this.onTraining();
      }
    } else if (msg.type === "error") {
      this.say(msg.message);
    }
  }

  row(p) {
    const outcome = el("span", { class: "outcome", "aria-live": "polite" });
    const picker = el("select", { "aria-label": `Correct label for ${p.id}` },
      ...this.labels.map((label) => el("option", { value: label, selected: label === p.label },
                                       label)));
    const send = async (label, verb) => {
      try {
        await request("POST", `v1/apps/${encodeURIComponent(this.app)}/feedback`,
                      { prediction_id: p.id, label });
        replace(outcome, label === p.label ? "confirmed" : `${verb} to ${label}`);
        this.onTraining();
      } catch (exc) {
        this.say(exc.message);
      }
    };
    return el("tr", { "data-prediction": p.id },
      el("td", {}, p.at ? time(p.at) : ""),
      el("td", { class: "label" }, p.label),
      el("td", {}, `${Math.round(100 * p.confidence)} %`),
      el("td", {}, p.stage === 1 ? "gate" : "ensemble"),
      el("td", {}, p.channel || ""),
      el("td", { class: "teach" },
        el("button", { type: "button", onclick: () => send(p.label, "confirmed") }, "Confirm"),
        picker,
        el("button", { type: "button", onclick: () => send(picker.value, "corrected") },
           "Correct"),
        outcome));
  }
}
