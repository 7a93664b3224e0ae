// A stream app's panel on its page: what is happening now (the activity the daemon debounced
// from its windows' predictions), each channel's last reading and whether it went stale, the
// last window's validity, and the channel timeline where spans are labelled.
// The activity comes live from the app's WebSocket (the page's one stream, in live.js, hands
// it over); everything else from GET /v1/apps/{app}, which app.js re-reads every 2 s anyway.
import { ago, el, replace, time } from "./dom.js";
import { SpanForm } from "./spans.js";
import { Timeline } from "./timeline.js";

export function isStreamApp(app) {
  return Boolean(app && app.channels && app.channels.length);
}

export class StreamPanel {
  constructor(node, path, say, onLabelled) {
    this.current = undefined;  // the activity shown: {label, since} or null
    this.activityLine = el("p", { class: "activity", "aria-live": "polite" }, "…");
    this.windowLine = el("p", { class: "muted" });
    this.rows = el("tbody");
    const timelineNode = el("div");
    const formNode = el("div", { class: "card" });
    this.timeline = new Timeline(timelineNode, path, say,
                                 (start, end, done) => this.form.select(start, end, done));
    this.form = new SpanForm(formNode, path, (start, end) => this.timeline.select(start, end),
                             () => { this.timeline.refresh(); onLabelled(); });
    const section = (id, title, ...rest) => el("section", { id, "aria-labelledby": `${id}-title` },
      el("h2", { id: `${id}-title` }, title), ...rest);
    replace(node,
      section("activity", "Now", this.activityLine,
        el("table", { class: "channels" },
          el("caption", {}, "Channels"),
          el("thead", {}, el("tr", {}, ...["channel", "last reading", "state", "resample",
                                           "source"].map((h) => el("th", { scope: "col" }, h)))),
          this.rows),
        this.windowLine),
      section("timeline", "Timeline", timelineNode, formNode));
  }

  // Every poll of the app page: the channels' state and the activity as the daemon has them.
  update(app) {
    this.timeline.setChannels(app.channels);
    this.form.setLabels(app.labels);
    this.show(app.activity, false);
    const now = Date.now() / 1000;
    replace(this.rows, ...app.channels.map((c) => el("tr", { class: c.stale ? "stale" : "" },
      el("th", { scope: "row" }, c.name),
      el("td", {}, c.last_t === null ? "none yet"
                                     : `${time(c.last_t)} (${ago(Math.max(0, now - c.last_t))} ago)`),
      // the word, not only a colour: stale is what makes its windows invalid
      el("td", {}, c.stale ? el("span", { class: "chip stale" }, "stale") : "fresh",
         c.stale_s === null ? "" : el("span", { class: "muted" }, ` (after ${c.stale_s} s)`)),
      el("td", {}, c.resample),
      el("td", {}, c.topic ? `${c.topic}${c.field ? ` · ${c.field}` : ""}` : "HTTP or WebSocket"))));
    const w = app.window;
    replace(this.windowLine, !w ? "No window closed yet."
      : `Last window ended ${time(w.end)}: ` + (w.valid ? "valid"
        : `invalid (no usable reading from ${w.missing.join(", ")})`));
    this.timeline.tick();
  }

  // The stream's {"type": "event", "kind": "activity", label, since}: shown at once.
  activity(msg) {
    this.show({ label: msg.label, since: msg.since }, true);
  }

  show(activity, live) {
    // a poll answered after a newer event must not bring back the older activity
    if (!live && activity && this.current && activity.since < this.current.since) return;
    if (JSON.stringify(activity) === JSON.stringify(this.current)) return;
    this.current = activity;
    replace(this.activityLine, activity
      ? el("span", {}, "Activity: ", el("strong", { class: "label" }, activity.label),
           ` since ${time(activity.since)}`)
      : "Activity: none yet (it shows once a model predicts the windows).");
  }

  close() {
    this.timeline.close();
  }
}
