// Labelling a span of a stream app: its start and end (unix seconds, filled by a drag on the
// timeline, or typed: the keyboard's way to select), a label picked from the app's known ones
// or typed anew, and POST /v1/apps/{app}/labels. The daemon turns every valid window wholly
// inside the span into a labelled sample and answers how many; a refusal (an overlap with
// another label, a class the app does not declare) is shown in its own words, as text.
import { request } from "./api.js";
import { el, replace, time } from "./dom.js";
import { windows } from "./timeline.js";

let formCount = 0;  // ids unique on the page, for <label for> and the datalist

export class SpanForm {
  constructor(node, path, onEdit, onLabelled) {
    this.path = path;
    this.onEdit = onEdit;  // (start, end): typed times move the timeline's selection
    this.onLabelled = onLabelled;
    this.labels = null;
    const id = `span-${++formCount}`;
    const number = (name, suffix) => el("input", {
      type: "number", step: "any", id: `${id}-${suffix}`, "aria-label": name,
      inputmode: "decimal", oninput: () => this.edited() });
    this.start = number("Span start", "start");
    this.end = number("Span end", "end");
    this.datalist = el("datalist", { id: `${id}-labels` });
    this.label = el("input", { type: "text", id: `${id}-label`, "aria-label": "Span label",
                               list: `${id}-labels`, autocomplete: "off", maxlength: 128 });
    this.button = el("button", { type: "submit" }, "Label span");
    this.chosen = el("p", { class: "muted", "aria-live": "polite" }, "No span selected.");
    this.outcome = el("p", { role: "status", class: "outcome" });
    const field = (input, text) => el("div", { class: "field" },
      el("label", { for: input.id }, text), input);
    this.form = el("form", { class: "span-form", "aria-label": "Label a span" },
      el("div", { class: "span-times" },
         field(this.start, "Span start"), field(this.end, "Span end")),
      this.chosen, field(this.label, "Span label"), this.datalist,
      el("div", { class: "actions" }, this.button), this.outcome);
    this.form.addEventListener("submit", (event) => { event.preventDefault(); this.send(); });
    replace(node, this.form);
  }

  // The app's known labels as suggestions; rebuilt only when they change (every poll brings
  // them), so an open suggestion list is not pulled from under the person choosing.
  setLabels(labels) {
    const key = JSON.stringify(labels || []);
    if (key === this.labels) return;
    this.labels = key;
    replace(this.datalist, ...(labels || []).map((l) => el("option", { value: l })));
  }

  // A drag on the timeline: its times into the fields; once released, on to the label.
  select(start, end, done) {
    this.start.value = String(start);
    this.end.value = String(end);
    this.describe(start, end);
    if (done) this.label.focus();
  }

  edited() {
    const start = this.start.valueAsNumber, end = this.end.valueAsNumber;
    const ok = Number.isFinite(start) && Number.isFinite(end);
    this.onEdit(ok ? start : null, ok ? end : null);
    this.describe(start, end);
  }

  // The selection as a person reads it: local times and a length, next to the raw numbers.
  describe(start, end) {
    if (!(Number.isFinite(start) && Number.isFinite(end))) {
      replace(this.chosen, "No span selected.");
    } else if (end <= start) {
      replace(this.chosen, "The end must be after the start.");
    } else {
      replace(this.chosen, `Selected ${time(start)} – ${time(end)} ` +
                           `(${(end - start).toFixed(1)} s).`);
    }
  }

  async send() {
    const start = this.start.valueAsNumber, end = this.end.valueAsNumber;
    const label = this.label.value.trim();
    // without an end the daemon would open a range ("it is happening now"): never by accident
    if (!Number.isFinite(start) || !Number.isFinite(end)) {
      return this.show("Select a span first: drag across the timeline, or type its start and " +
                       "end (unix seconds).", "error");
    }
    this.button.disabled = true;  // one click, one range
    try {
      const answer = await request("POST", `${this.path}/labels`, { label, start, end });
      this.show(`Labelled ${windows(answer.windows)} as ${label}`, "outcome");
      this.start.value = "";
      this.end.value = "";
      this.edited();  // the new shaded span replaces the selection
      this.onLabelled(answer);
    } catch (exc) {
      this.show(exc.message, "error");  // 409 overlap, 422 refused label or times: as text
    } finally {
      this.button.disabled = false;
    }
  }

  show(text, kind) {
    this.outcome.className = kind;
    replace(this.outcome, text);
  }
}
