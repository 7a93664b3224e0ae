// A stream app's channel timeline: one row per channel on a shared time axis (the last 10 min,
// 1 h or 6 h), the labelled ranges shaded behind the lines, and a span selected by dragging.
// The daemon thins readings to at most 2000 points a channel, so one SVG polyline a row is
// cheap to redraw; the selection is kept in unix seconds, not pixels, so it survives redraws
// while the axis moves on with the clock. It is drawn at the width it is shown (one unit a CSS
// pixel), so its text stays readable on a phone instead of shrinking with a fixed viewBox.
import { get } from "./api.js";
import { el, replace, svg, time } from "./dom.js";

const RIGHT = 8, TOP = 16, ROW = 56, GAP = 8, AXIS = 22;
const SPANS = [["10 min", 600], ["1 h", 3600], ["6 h", 21600]];
const REDRAW_MS = 5000;  // new readings appear without a reload; the drawing is not a live feed
const TICKS = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
const COLOURS = 6;  // span colour classes c0..c5: one per label, stable across redraws

export class Timeline {
  constructor(node, path, say, onSelect) {
    this.path = path;
    this.say = say;
    this.onSelect = onSelect;  // (start, end, done): the drag as it goes, and when released
    this.spanS = SPANS[0][1];
    this.view = null;  // {t0, t1} of the last drawing: what a drag's pixels mean
    this.sel = null;  // {start, end} in unix seconds
    this.drag = null;
    this.seq = 0;  // a redraw answered late must not replace a newer one
    this.drawnAt = 0;
    this.resample = {};
    this.skew = null;  // the daemon's clock less this device's, in seconds, once known
    this.w = 800;  // the drawing's width, in CSS pixels, at the last draw
    this.left = 120;  // where the plot begins, after the channels' names
    this.backs = svg("g", { class: "backs" });  // row backgrounds, under the shaded spans
    this.spans = svg("g", { class: "spans" });
    this.rows = svg("g", { class: "rows" });
    this.axis = svg("g", { class: "axis" });
    this.selRect = svg("rect", { class: "selection", x: 0, y: 0, width: 0, height: 0,
                                 visibility: "hidden" });
    // role img: the drawing has no parts of its own to reach; the span form below is the
    // keyboard's way to select, and the list under it names the labelled spans as text
    this.svg = svg("svg", { class: "timeline", viewBox: `0 0 ${this.w} ${TOP + AXIS}`,
                            role: "img", "aria-label": "Channel timeline",
                            "aria-describedby": "timeline-hint" },
                   this.backs, this.spans, this.rows, this.axis, this.selRect);
    this.buttons = SPANS.map(([text, s]) => el("button", {
      type: "button", class: "secondary", "aria-pressed": String(s === this.spanS),
      onclick: () => this.setSpan(s) }, text));
    this.list = el("ul", { class: "ranges", "aria-label": "Labelled spans in view" });
    this.status = el("p", { class: "muted" });
    replace(node,
      el("div", { class: "teach", role: "group", "aria-label": "Timeline span" },
         el("span", { class: "muted" }, "Show the last"), ...this.buttons),
      this.svg,
      el("p", { id: "timeline-hint", class: "muted" },
         "Drag across the timeline to select a span to label, or type its start and end " +
         "below. Shaded: spans labelled already."),
      this.status, this.list);
    this.svg.addEventListener("pointerdown", (e) => this.down(e));
    this.svg.addEventListener("pointermove", (e) => this.move(e));
    this.svg.addEventListener("pointerup", (e) => this.up(e));
    this.svg.addEventListener("pointercancel", () => { this.drag = null; });
  }

  // Each channel's resampling (from the app's JSON), which decides how its line is drawn.
  setChannels(channels) {
    this.resample = Object.fromEntries(channels.map((c) => [c.name, c.resample]));
  }

  setSpan(seconds) {
    this.spanS = seconds;
    for (const [i, b] of this.buttons.entries()) {
      b.setAttribute("aria-pressed", String(SPANS[i][1] === seconds));
    }
    this.refresh();
  }

  // Called on every poll of the app page: redraws now and then, never under a drag; at once
  // (from what it has) when the page changed width, a phone turned.
  tick() {
    if (this.drag) return;
    if (Date.now() - this.drawnAt >= REDRAW_MS) this.refresh();
    else if (this.last && Math.abs(this.svg.getBoundingClientRect().width - this.w) > 4) {
      this.draw(...this.last);
    }
  }

  // The axis runs on the daemon's clock, not this device's (a phone may be minutes off, and
  // a span's times go back to the daemon): the first read asks for the daemon's default span,
  // the last ten minutes by its own clock, and the difference is kept for the others.
  async refresh() {
    const seq = ++this.seq;
    this.drawnAt = Date.now();
    const local = Date.now() / 1000;
    const learn = this.skew === null && this.spanS === SPANS[0][1];
    const t1 = local + (this.skew || 0), t0 = t1 - this.spanS;
    try {
      const [readings, { labels }] = await Promise.all([
        get(learn ? `${this.path}/readings`
                  : `${this.path}/readings?start=${t0.toFixed(3)}&end=${t1.toFixed(3)}`),
        get(`${this.path}/labels`)]);
      if (learn) this.skew = readings.end - local;
      if (seq !== this.seq || this.closed) return;
      this.draw(readings, labels, readings.start, readings.end);
    } catch (exc) {
      if (seq === this.seq && !this.closed) this.say(exc.message);
    }
  }

  // The page left: an answer still on its way is dropped.
  close() {
    this.closed = true;
    this.drag = null;
  }

  draw(readings, labels, t0, t1) {
    this.last = [readings, labels, t0, t1];
    this.view = { t0, t1 };
    this.w = Math.max(280, Math.round(this.svg.getBoundingClientRect().width) || 800);
    this.left = this.w < 560 ? 84 : 120;
    const channels = readings.channels;
    const height = TOP + channels.length * (ROW + GAP) + AXIS;
    this.svg.setAttribute("viewBox", `0 0 ${this.w} ${height}`);
    this.plotH = channels.length * (ROW + GAP) - GAP;
    replace(this.backs, ...channels.map((c, i) => svg("rect", {
      class: "row", x: this.left, y: TOP + i * (ROW + GAP), width: this.plot, height: ROW })));
    replace(this.rows, ...channels.map((c, i) => this.row(c, TOP + i * (ROW + GAP))));
    replace(this.axis, ...this.ticks(t0, t1, TOP + this.plotH));
    const shown = labels.filter((r) => r.start < t1 && (r.end === null || r.end > t0));
    replace(this.spans, ...shown.map((r) => this.span(r, t0, t1)));
    replace(this.list, ...shown.map((r) => el("li", {},
      el("span", { class: `swatch ${colour(r.label)}` }), r.label,
      ` · ${time(r.start)} – ${r.end === null ? "now (open)" : time(r.end)} · ` +
      windows(r.windows))));
    replace(this.status, channels.every((c) => !c.n)
      ? "No readings in this span." : channels.map((c) => `${c.name}: ${c.n} readings`)
        .join(" · "));
    this.drawSelection();
  }

  get plot() { return this.w - this.left - RIGHT; }

  x(t) { return this.left + (this.plot * (t - this.view.t0)) / (this.view.t1 - this.view.t0); }

  row(c, y0) {
    const top = y0 + 4, bottom = y0 + ROW - 4;
    const lo = Math.min(...c.value), hi = Math.max(...c.value);
    const flat = !(hi > lo);  // one value (or none): drawn mid-row
    const y = (v) => flat ? (top + bottom) / 2 : bottom - ((bottom - top) * (v - lo)) / (hi - lo);
    const points = [];
    for (let i = 0; i < c.t.length; i++) {
      const x = this.x(c.t[i]).toFixed(1);
      // a held channel (a plug's power) keeps its value until the next reading: steps, not
      // slopes that suggest a ramp nobody measured
      if (this.resample[c.name] === "hold" && i) {
        points.push(`${x},${y(c.value[i - 1]).toFixed(1)}`);
      }
      points.push(`${x},${y(c.value[i]).toFixed(1)}`);
    }
    return svg("g", { class: "channel", "data-channel": c.name },
      svg("text", { class: "name", x: 4, y: y0 + 18 }, c.name),
      svg("text", { class: "tick", x: 4, y: y0 + 36 },
          c.n ? `${fmt(lo)} – ${fmt(hi)}` : "no readings"),
      points.length ? svg("polyline", { points: points.join(" ") }) : null);
  }

  span(r, t0, t1) {
    const a = this.x(Math.max(r.start, t0)), b = this.x(Math.min(r.end ?? t1, t1));
    return svg("g", { class: `span ${colour(r.label)}${r.end === null ? " open" : ""}`,
                      "data-label": r.label, "data-label-id": r.label_id },
      svg("title", {}, `${r.label}: ${time(r.start)} – ` +
                       `${r.end === null ? "open" : time(r.end)}, ${windows(r.windows)}`),
      svg("rect", { x: a.toFixed(1), y: TOP, width: Math.max(1, b - a).toFixed(1),
                    height: this.plotH }),
      // named above the rows where the name fits; the list under the drawing names them all
      b - a >= 7 * r.label.length + 6 ? svg("text", { x: (a + 3).toFixed(1), y: TOP - 4 },
                                            r.label) : null);
  }

  ticks(t0, t1, y) {
    const most = Math.max(2, Math.floor(this.plot / 90));  // a time label is about 60 px wide
    const step = TICKS.find((s) => (t1 - t0) / s <= most) || TICKS[TICKS.length - 1];
    const out = [svg("line", { x1: this.left, y1: y + 2, x2: this.w - RIGHT, y2: y + 2 })];
    const options = step < 60 ? {} : { hour: "2-digit", minute: "2-digit" };
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      const x = this.x(t);
      out.push(svg("line", { x1: x, y1: y + 2, x2: x, y2: y + 6 }),
               svg("text", { class: "tick", x, y: y + 18, "text-anchor": "middle" },
                   new Date(t * 1000).toLocaleTimeString([], options)));
    }
    return out;
  }

  // -- selecting a span ----------------------------------------------------------------------

  timeAt(event) {
    const box = this.svg.getBoundingClientRect();
    const px = ((event.clientX - box.left) * this.w) / box.width;
    const frac = Math.min(1, Math.max(0, (px - this.left) / this.plot));
    return Math.round((this.view.t0 + frac * (this.view.t1 - this.view.t0)) * 1000) / 1000;
  }

  down(event) {
    if (!this.view || event.button !== 0) return;
    event.preventDefault();  // no text selection of the tick labels while dragging
    this.svg.setPointerCapture(event.pointerId);  // the drag goes on outside the drawing
    this.drag = { anchor: this.timeAt(event) };
    this.select(this.drag.anchor, this.drag.anchor);
  }

  move(event) {
    if (!this.drag) return;
    const t = this.timeAt(event);
    this.select(Math.min(t, this.drag.anchor), Math.max(t, this.drag.anchor));
    this.onSelect(this.sel.start, this.sel.end, false);
  }

  up(event) {
    if (!this.drag) return;
    this.move(event);
    this.drag = null;
    if (this.sel.end > this.sel.start) this.onSelect(this.sel.start, this.sel.end, true);
    else this.select(null, null);  // a click without a drag selects nothing
  }

  // The span from a drag or from the form's start and end; null clears it.
  select(start, end) {
    this.sel = start === null || end === null ? null : { start, end };
    this.drawSelection();
  }

  drawSelection() {
    const s = this.sel, v = this.view;
    if (!s || !v || s.end < v.t0 || s.start > v.t1) {
      this.selRect.setAttribute("visibility", "hidden");
      return;
    }
    const a = this.x(Math.max(s.start, v.t0)), b = this.x(Math.min(s.end, v.t1));
    for (const [k, value] of Object.entries({ x: a, y: TOP, width: Math.max(1, b - a),
                                              height: this.plotH, visibility: "visible" })) {
      this.selRect.setAttribute(k, String(value));
    }
  }
}

export function windows(n) {
  return `${n} window${n === 1 ? "" : "s"}`;
}

function fmt(x) {
  return Math.abs(x) >= 1000 || Number.isInteger(x) ? String(Math.round(x)) : x.toPrecision(3);
}

function colour(label) {
  let h = 0;
  for (const ch of label) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `c${h % COLOURS}`;
}
