// The kept model versions: members and weights, metrics, reason and the adaptation decision,
// with a button to serve any other kept version (roll back or forward) and one to pin a
// version, which retention then never deletes.
import { request } from "./api.js";
import { el, percent, replace, time } from "./dom.js";

export function renderVersions(node, models, path, app, say, changed) {
  if (!models.versions.length) {
    replace(node, el("p", { class: "muted" }, "No version yet."));
    return;
  }
  const act = async (method, url, done) => {
    try {
      await request(method, url);
      say(done, "ok");
      changed();
    } catch (exc) {
      say(exc.message);
    }
  };
  replace(node, el("ol", { class: "versions", reversed: true },
    ...models.versions.map((v) => el("li", { class: v.version === models.current ? "current" : "" },
      el("strong", {}, `v${v.version}`), ` · ${v.reason || "?"} · `,
      v.created ? time(v.created) : "", " · validation ",
      percent(v.metrics ? v.metrics.val_accuracy : null),
      v.pinned ? el("span", { class: "chip" }, "pinned") : null,
      v.ends_run ? el("span", { class: "chip" }, "ended its run") : null,
      el("div", {}, ...v.members.map((m) =>
        el("span", { class: "chip" }, `${m.family} ${m.weight.toFixed(2)}`))),
      v.decision ? el("div", { class: "muted" }, decisionText(v.decision)) : null,
      v.version === models.current
        ? el("span", { class: "muted" }, "served now")
        : el("button", { type: "button", "aria-label": `Activate version ${v.version}`,
                         onclick: () => act("POST", `${path}/models/${v.version}/activate`,
                                            `Serving v${v.version} of ${app.name}.`) },
             "Activate"),
      " ",
      el("button", { type: "button",
                     "aria-label": `${v.pinned ? "Unpin" : "Pin"} version ${v.version}`,
                     title: "A pinned version is never deleted by retention",
                     onclick: () => act(v.pinned ? "DELETE" : "POST",
                                        `${path}/models/${v.version}/pin`,
                                        `${v.pinned ? "Unpinned" : "Pinned"} v${v.version} ` +
                                        `of ${app.name}.`) },
         v.pinned ? "Unpin" : "Pin")))));
}

function decisionText(d) {
  return `adaptation: ${d.corrections} corrections, new ${percent(d.new_accuracy)} vs ` +
         `current ${percent(d.current_accuracy)} on ${d.holdout} held out` +
         (d.drift ? ", after drift" : "") + (d.published ? ": published" : ": kept the old one");
}
