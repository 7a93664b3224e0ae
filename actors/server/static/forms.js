// Create or edit an app (PUT /v1/apps/NAME). Apps declared in the config file belong to the
// file: their form is shown read-only, with the reason.
import { request } from "./api.js";
import { el } from "./dom.js";

let formCount = 0;

export function appForm(app, done, say) {
  const id = `app-form-${++formCount}`;
  const spec = app || { policy: {} };
  const readOnly = app && app.owner === "file";
  const field = (name, label, input) => {
    input.id = `${id}-${name}`;
    input.name = name;
    input.disabled = readOnly;
    return el("div", { class: "field" }, el("label", { for: input.id }, label), input);
  };
  const text = (value) => el("input", { type: "text", value: value ?? "" });
  const number = (value, step = "any") => el("input", { type: "number", step, value: value ?? "" });
  const select = (value, options) => el("select", {}, ...options.map((o) =>
    el("option", { value: o, selected: o === value }, o)));
  const fields = {
    name: app ? null : field("name", "Name ([a-z0-9_-])", text("")),
    data_type: field("data_type", "Data type",
                     select(spec.data_type || "vector", ["vector", "sensor", "image", "audio"])),
    classes: field("classes", "Classes (comma separated; empty: learned from labels)",
                   text((spec.classes || []).join(", "))),
    shape: field("shape", "Shape (e.g. 64 or 8,8; empty: the first sample's)",
                 text((spec.shape || []).join(","))),
    background_class: field("background_class", "Background class (two-stage serving)",
                            text(spec.background_class || "")),
    mode: field("mode", "Policy", select(spec.policy.mode || "best_effort",
                                        ["best_effort", "low_latency"])),
    latency_ms: field("latency_ms", "Latency budget, ms", number(spec.policy.latency_ms)),
    max_models: field("max_models", "At most models", number(spec.policy.max_models, "1")),
    retrain_after: field("retrain_after", "Retrain after corrections",
                         number(spec.policy.retrain_after, "1")),
  };
  const form = el("form", { class: "app-form", "aria-label": app ? "Edit app" : "New app" },
    readOnly ? el("p", { class: "muted" },
                  "Declared in the config file: change it there (the API may not).") : null,
    ...Object.values(fields),
    readOnly ? null : el("button", { type: "submit" }, app ? "Save" : "Create"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = (name) => form.elements[name].value.trim();
    const list = (text) => text ? text.split(",").map((s) => s.trim()).filter(Boolean) : null;
    const name = app ? app.name : value("name");
    const body = { data_type: value("data_type"), policy: { mode: value("mode") } };
    if (list(value("classes"))) body.classes = list(value("classes"));
    if (value("shape")) body.shape = list(value("shape")).map(Number);
    if (value("background_class")) body.background_class = value("background_class");
    for (const key of ["latency_ms", "max_models", "retrain_after"]) {
      if (value(key)) body.policy[key] = Number(value(key));
    }
    try {
      await request("PUT", `v1/apps/${encodeURIComponent(name)}`, body);
      say(`Saved ${name}.`, "ok");
      done(name);
    } catch (exc) {
      say(exc.message);
    }
  });
  return form;
}
