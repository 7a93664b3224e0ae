// An app's data: samples per class and corrections, a labelled file to upload, and one test
// sample to predict (numbers; an image drawn to the app's shape; audio at its sample rate).
import { request } from "./api.js";
import { el, percent, replace } from "./dom.js";

export function renderCounts(node, app) {
  const counts = Object.entries(app.class_counts || {});
  replace(node,
    el("table", {}, el("caption", {}, `${app.n_samples} samples, ${app.n_feedback} from feedback`),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "class"),
                         el("th", { scope: "col" }, "samples"))),
      el("tbody", {}, ...counts.map(([label, n]) =>
        el("tr", {}, el("th", { scope: "row" }, label), el("td", {}, n))))));
}

// Built once per page: a re-render would lose the file a person is choosing.
export function uploadForm(app, path, say, changed) {
  const file = el("input", { type: "file", id: "upload-file", accept: ".csv,.npz" });
  const upload = el("form", { class: "upload", "aria-label": "Upload labelled samples" },
    el("label", { for: "upload-file" }, "Labelled file: CSV (label last) or npz (X, y)"), file,
    el("button", { type: "submit" }, "Upload"));
  upload.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = file.files[0];
    if (!f) return say("Choose a file first.");
    const type = f.name.toLowerCase().endsWith(".npz") ? "application/x-npz" : "text/csv";
    try {
      const answer = await request("POST", `${path}/import`, await f.arrayBuffer(), type);
      say(answer.duplicate ? `${f.name} was imported before: nothing added.`
                           : `Added ${answer.accepted} samples to ${app.name} ` +
                             `(${answer.n_samples} in all).`, "ok");
      changed();
    } catch (exc) {
      say(exc.message);
    }
  });
  return upload;
}

export function testSampleForm(app, path, say) {
  const result = el("p", { "aria-live": "polite" });
  const kind = app.data_type;
  const input = kind === "image" || kind === "audio"
    ? el("input", { type: "file", id: "test-input", accept: kind === "image" ? "image/*" : "audio/*" })
    : el("textarea", { id: "test-input", rows: 3,
                       placeholder: kind === "sensor" ? "one channel a line: 1 2 3" : "0.1, 0.9, 0.3" });
  const form = el("form", { class: "test", "aria-label": "Send a test sample" },
    el("label", { for: "test-input" }, `A test sample (${kind})`), input,
    el("button", { type: "submit" }, "Predict"), result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const features = await featuresOf(kind, input, app);
      const answer = await request("POST", `${path}/predict`, { instances: [features] });
      const p = answer.predictions[0];
      replace(result, `${p.label} (${percent(p.confidence)}, v${p.model_version})`);
    } catch (exc) {
      say(exc.message);
    }
  });
  return form;
}

async function featuresOf(kind, input, app) {
  if (kind === "vector") return numbers(input.value);
  if (kind === "sensor") return input.value.trim().split(/\n|;/).map(numbers);
  const file = input.files[0];
  if (!file) throw new Error("Choose a file first.");
  return kind === "image" ? imagePixels(file, app.shape) : audioSamples(file, app.sample_rate);
}

function numbers(text) {
  return text.trim().split(/[\s,]+/).filter(Boolean).map(Number);
}

// The image drawn at the app's shape: grey when the shape is 2-D, RGB when (h, w, 3); 0-255.
async function imagePixels(file, shape) {
  if (!shape || shape.length < 2) throw new Error("This app has no image shape yet.");
  const [h, w, c] = shape;
  const bitmap = await createImageBitmap(file);
  const canvas = el("canvas", { width: w, height: h });
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, w, h);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const rows = [];
  for (let y = 0; y < h; y++) {
    const row = [];
    for (let x = 0; x < w; x++) {
      const i = 4 * (y * w + x);
      const [r, g, b] = [rgba[i], rgba[i + 1], rgba[i + 2]];
      row.push(c === 3 ? [r, g, b] : Math.round(0.299 * r + 0.587 * g + 0.114 * b));
    }
    rows.push(row);
  }
  return rows;
}

// The clip decoded by WebAudio, mixed to mono at the app's sample rate.
async function audioSamples(file, rate) {
  const context = new OfflineAudioContext(1, 1, rate);
  const decoded = await context.decodeAudioData(await file.arrayBuffer());
  const length = Math.ceil(decoded.duration * rate);
  const offline = new OfflineAudioContext(1, length, rate);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const rendered = await offline.startRendering();
  return Array.from(rendered.getChannelData(0));
}
