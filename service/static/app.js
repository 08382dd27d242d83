// The trainlab dashboard: a few views over the HTTP API, routed by the URL's hash. Live views follow the
// experiment's Server-Sent Events (EventSource reconnects with Last-Event-ID by itself).
"use strict";

const view = document.getElementById("view");
let cleanup = () => {};  // stops the current view's polling or event stream

const EXAMPLE_SPEC = {
  name: "first cnn",
  dataset: {name: "mnist-10k"},
  model: {kind: "cnn", channels: [32, 64], hidden: 128},
  optimizer: {kind: "adam", lr: 0.001},
  batch_size: 64,
  epochs: 2,
};

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw Object.assign(new Error(describe(body?.detail) || response.statusText), {status: response.status});
  return body;
}

function describe(detail) {
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("\n");
  return detail ? String(detail) : "";
}

const FINISHED = ["succeeded", "failed", "cancelled"];
const fmt = (v, digits = 4) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

// A progress event in words: a training epoch's batches, or (stage "features") a frozen backbone's features
// being computed at the start of the first epoch.
function progressText(p) {
  const rate = `${fmt(p.samples_per_s, 0)} samples/s`;
  if (p.stage === "features") {
    return `epoch ${p.epoch}/${p.epochs}: the frozen backbone's features, batch ${p.batch}/${p.batches}, ${rate}, ` +
      `ETA ${fmt(p.eta_s, 0)} s `;
  }
  return `epoch ${p.epoch}/${p.epochs}: batch ${p.batch}/${p.batches}, loss ${fmt(p.loss)}, ${rate}, ` +
    `epoch ETA ${fmt(p.eta_epoch_s, 0)} s, run ETA ${fmt(p.eta_run_s, 0)} s `;
}
const badge = (status) => h("span", {class: `badge ${status}`, "data-status": status}, status);

function bestText(e) {
  if (!e.best) return "–";
  return e.best.val_accuracy !== null ? `acc ${fmt(e.best.val_accuracy)}` : `loss ${fmt(e.best.val_loss)}`;
}

function duration(e) {
  if (!e.started_at) return "–";
  const end = e.finished_at ? new Date(e.finished_at) : new Date();
  const s = Math.max(0, (end - new Date(e.started_at)) / 1000);
  return s < 90 ? `${s.toFixed(0)} s` : `${(s / 60).toFixed(1)} min`;
}

// -- experiments table ----------------------------------------------------------------------------------

function listView() {
  const selected = new Set();
  const body = h("tbody");
  const compare = h("button", {onclick: () => { location.hash = `#/compare?ids=${[...selected].join(",")}`; }},
    "Compare selected");
  const name = h("input", {type: "search", id: "filter-name", placeholder: "name contains", oninput: () => refresh()});
  const status = h("select", {id: "filter-status", onchange: () => refresh()},
    ["", "queued", "running", "succeeded", "failed", "cancelled"].map((s) => h("option", {value: s}, s || "any status")));
  const tag = h("input", {type: "search", id: "filter-tag", placeholder: "tag", oninput: () => refresh()});
  const dataset = h("select", {id: "filter-dataset", onchange: () => refresh()}, h("option", {value: ""}, "any dataset"));
  api("/datasets").then((all) => dataset.append(...all.map((d) => h("option", {value: d.name}, d.name)))).catch(() => {});
  const sort = h("select", {id: "sort", title: "order", onchange: () => refresh()},
    [["newest", "newest first"], ["oldest", "oldest first"], ["val_accuracy", "most accurate first"],
      ["val_loss", "lowest val loss first"]].map(([value, text]) => h("option", {value}, text)));
  const byTag = (t) => () => { tag.value = t; refresh(); };
  view.replaceChildren(h("h1", {}, "Experiments"),
    h("p", {}, compare, " ", h("a", {href: "#/submit"}, "Submit one"), " · ", name, " ", status, " ", dataset, " ", tag, " ", sort),
    h("table", {id: "experiments"},
      h("thead", {}, h("tr", {}, ["", "id", "name", "status", "dataset", "model", "epoch", "best", "duration"]
        .map((c) => h("th", {}, c)))), body));
  let latest = 0;  // typing sends a request per key: only the newest answer is drawn
  async function refresh() {
    const query = new URLSearchParams({limit: 100, sort: sort.value});
    if (name.value) query.set("name", name.value);
    if (status.value) query.set("status", status.value);
    if (dataset.value) query.set("dataset", dataset.value);
    if (tag.value.trim()) query.set("tag", tag.value.trim());
    const asked = ++latest;
    let page;
    try {
      page = await api(`/experiments?${query}`);
    } catch (err) {  // e.g. a tag with a space in it
      if (asked === latest) body.replaceChildren(h("tr", {}, h("td", {colspan: 9, class: "error"}, err.message)));
      return;
    }
    if (asked !== latest) return;
    body.replaceChildren(...page.items.map((e) => h("tr", {"data-id": e.id},
      h("td", {}, h("input", {type: "checkbox", checked: selected.has(e.id),
        onchange: (ev) => (ev.target.checked ? selected.add(e.id) : selected.delete(e.id))})),
      h("td", {}, h("a", {href: `#/experiments/${e.id}`}, e.id)),
      h("td", {}, h("a", {href: `#/experiments/${e.id}`}, e.name),
        e.tags.flatMap((t) => [" ", h("button", {class: "tag", title: "only runs with this tag", onclick: byTag(t)}, t)])),
      h("td", {}, badge(e.status)), h("td", {}, e.spec.dataset.name), h("td", {}, e.spec.model.kind),
      h("td", {}, `${e.current_epoch}/${e.epochs}`), h("td", {}, bestText(e)), h("td", {}, duration(e)))));
    const filtered = name.value || status.value || dataset.value || tag.value;
    const none = filtered ? "No experiment matches." : "No experiments yet.";
    if (!page.items.length) body.append(h("tr", {}, h("td", {colspan: 9}, none)));
  }
  refresh();
  const timer = setInterval(refresh, 2000);
  cleanup = () => clearInterval(timer);
}

// -- one experiment, live ---------------------------------------------------------------------------------

function curvePanels(task) {
  return task === "regression"
    ? [["loss", "Loss (standardised)"], ["mae", "MAE"], ["r2", "R²"]]
    : [["loss", "Loss"], ["accuracy", "Accuracy"]];
}

function drawCurves(box, rows, task) {
  box.replaceChildren(...curvePanels(task).map(([metric, title]) => {
    const series = ["train", "val"].filter((split) => rows.some((r) => r[`${split}_${metric}`] !== null && r[`${split}_${metric}`] !== undefined))
      .map((split) => ({label: split === "val" ? "validation" : "train",
        points: rows.map((r) => [r.epoch, r[`${split}_${metric}`]])}));
    // The training loss within each epoch (its mean over each twentieth of the batches), in the train colour.
    const within = metric === "loss" ? lossWithinEpochs(rows) : [];
    if (within.length) series.push({label: "train, within epochs", points: within, color: COLORS[0], thin: true});
    return lineChart(series, {title});
  }));
}

// The training loss within each epoch as (epoch, loss) points: an epoch's parts end at equal fractions of it.
function lossWithinEpochs(rows) {
  return rows.flatMap((r) => (r.train_loss_curve || []).map((v, k, all) => [r.epoch - 1 + (k + 1) / all.length, v]));
}

async function experimentView(id) {
  const experiment = await api(`/experiments/${id}`);
  const rows = [];
  const header = h("div", {class: "exp-header"});
  const progress = h("div", {id: "progress", class: "muted"});
  const curves = h("div", {id: "curves", class: "charts"});
  const note = h("p", {id: "curve-note", class: "warning"});
  // What the curves show, in words (GET .../diagnosis), asked again after each epoch: a replayed burst of epochs
  // asks once, and only the newest answer is shown.
  let noteAsked = 0, noteTimer = null;
  const showCurves = () => {
    drawCurves(curves, rows, experiment.spec.task);
    clearTimeout(noteTimer);
    noteTimer = setTimeout(async () => {
      const asked = ++noteAsked;
      const findings = await api(`/experiments/${id}/diagnosis`).catch(() => null);
      if (findings && asked === noteAsked) note.textContent = findings.map((f) => f.message).join(" ");
    }, 100);
  };
  const logs = h("pre", {id: "logs", class: "logs"});
  const extras = h("div", {id: "extras"});
  const [notes, showNotes] = notesPanel(experiment);
  // What it learnt from: a table's columns (`features`), or images; null where the dataset has been deleted since.
  const dataset = api(`/datasets/${experiment.spec.dataset.name}`).catch(() => null);
  view.replaceChildren(header, notes, progress, curves, note,
    h("div", {class: "columns"},
      h("section", {}, h("h2", {}, "Predict"), predictPanel(id, experiment, dataset)),
      h("section", {}, h("h2", {}, "Spec"), h("pre", {class: "spec"}, JSON.stringify(experiment.spec, null, 2)))),
    extras, h("h2", {}, "Log"), logs);

  function renderHeader(e) {
    header.replaceChildren(...[h("h1", {}, `#${e.id} ${e.name} `, badge(e.status)),
      h("p", {}, `epoch ${e.current_epoch}/${e.epochs} · best ${bestText(e)} · ${e.spec.dataset.name} · `,
        `${e.spec.model.kind} · ${e.device || "no device yet"} · `, h("a", {href: `/experiments/${e.id}/metrics.csv`}, "metrics.csv")),
      e.error ? h("p", {class: "error"}, e.error) : null, e.stop_reason ? h("p", {}, e.stop_reason) : null,
      actions(e)].filter(Boolean));
  }
  renderHeader(experiment);
  showCurves();

  const source = new EventSource(`/experiments/${id}/events`);
  source.addEventListener("epoch", (ev) => {
    rows.push(JSON.parse(ev.data));
    showCurves();
    progress.textContent = "";
  });
  source.addEventListener("progress", (ev) => {
    const p = JSON.parse(ev.data);
    progress.replaceChildren(progressText(p), h("progress", {max: p.batches, value: p.batch}));
  });
  source.addEventListener("queue", (ev) => {
    const q = JSON.parse(ev.data);
    progress.textContent = `queued, position ${q.position}: waiting for ${q.waiting_for}`;
  });
  source.addEventListener("log", (ev) => { logs.textContent += JSON.parse(ev.data).message + "\n"; });
  let finished = false;  // a finished run's stream replays each of its statuses: its extras are drawn once
  source.addEventListener("status", async () => {
    const e = await api(`/experiments/${id}`);
    renderHeader(e);
    if (FINISHED.includes(e.status) && !finished) {
      finished = true;
      source.close();
      progress.textContent = "";
      showExtras(extras, e, await dataset);
    }
  });
  // A rename, notes or tags saved elsewhere (another tab, the command line) show when this page is looked at
  // again; the event stream carries none of them, and has ended once the run has.
  const lookedAt = async () => {
    if (document.visibilityState !== "visible") return;
    const e = await api(`/experiments/${id}`);
    renderHeader(e);
    showNotes(e);
  };
  document.addEventListener("visibilitychange", lookedAt);
  window.addEventListener("focus", lookedAt);
  cleanup = () => {
    source.close();
    document.removeEventListener("visibilitychange", lookedAt);
    window.removeEventListener("focus", lookedAt);
  };
}

// What the user writes of a run, and its tags (space-separated): saved with PATCH, never read by its training.
function notesPanel(e) {
  const notes = h("textarea", {id: "notes", rows: 2, placeholder: "notes: what this run showed"});
  notes.value = e.notes;
  const tags = h("input", {id: "tags", placeholder: "tags, e.g. baseline flips", size: 40, value: e.tags.join(" ")});
  const message = h("span", {id: "notes-saved"});
  let edited = false;  // unsaved typing, which what is saved elsewhere must not overwrite
  for (const field of [notes, tags]) field.addEventListener("input", () => { edited = true; });
  const save = h("button", {id: "save-notes", onclick: async () => {
    try {
      const saved = await api(`/experiments/${e.id}`, {method: "PATCH", headers: {"content-type": "application/json"},
        body: JSON.stringify({notes: notes.value, tags: tags.value.split(/\s+/).filter(Boolean)})});
      tags.value = saved.tags.join(" ");
      edited = false;
      message.className = "ok";
      message.textContent = "saved";
    } catch (err) {
      message.className = "error";
      message.textContent = err.message;
    }
  }}, "Save notes");
  const show = (current) => {
    if (edited) return;
    notes.value = current.notes;
    tags.value = current.tags.join(" ");
  };
  return [h("div", {class: "notes"}, notes, h("p", {}, tags, " ", save, " ", message)), show];
}

// A button whose request's error shows beside it.
function actionButton(id, label, request) {
  const message = h("span", {class: "error"});
  const button = h("button", {id, onclick: async () => {
    try { await request(); } catch (err) { message.textContent = err.message; }
  }}, label);
  return h("p", {class: "actions"}, button, " ", message);
}

// Cancel while it is queued or running (the event stream then shows it cancelled); delete, once confirmed, when it
// has finished; at any time, open its spec in the Submit page's editor, to change into a new experiment.
function actions(e) {
  const button = FINISHED.includes(e.status)
    ? actionButton("delete", "Delete", async () => {
      if (!confirm(`Delete experiment #${e.id} with its metrics, checkpoints and logs? This cannot be undone.`)) return;
      await api(`/experiments/${e.id}`, {method: "DELETE"});
      location.hash = "#/";
    })
    : actionButton("cancel", "Cancel", () => api(`/experiments/${e.id}/cancel`, {method: "POST"}));
  button.prepend(h("a", {id: "edit-as-new", href: `#/submit?from=${e.id}`}, "Edit as a new experiment"), " · ");
  return button;
}

async function showExtras(box, e, dataset) {
  const parts = [];
  const checkpoints = await api(`/experiments/${e.id}/checkpoints`);
  const download = (c, file) => h("a", {href: `/experiments/${e.id}/${file}?epoch=${c.epoch}`}, file);
  parts.push(h("h2", {}, "Checkpoints"), h("table", {},
    h("tr", {}, h("th", {}, "epoch"), h("th", {}, "sha256"), h("th", {}, "download")),
    checkpoints.map((c) => h("tr", {}, h("td", {}, c.epoch), h("td", {class: "mono"}, c.sha256.slice(0, 16)),
      h("td", {}, download(c, "checkpoint.pt"), " ", download(c, "model.py"))))),
    ...(checkpoints.length ? [h("p", {}, "model.py: the model in plain PyTorch; ",
      h("code", {}, "python model.py checkpoint.pt image.png"), " predicts with it, without trainlab (a table's model: ",
      h("code", {}, "python model.py checkpoint.pt"), " and a row's values).")] : []));
  if (e.spec.task === "classification" && e.best) {
    const c = await api(`/experiments/${e.id}/confusion`);
    const max = Math.max(...c.matrix.flat());
    const images = !dataset?.features;  // a table's classifier has no images to show
    const mistakes = h("div", {id: "mistakes"});
    // A cell of mistakes, clicked: its images, most confidently wrong first.
    const show = (i, j) => mistakes.replaceChildren(h("img", {id: "cell-mistakes", class: "figure",
      src: `/experiments/${e.id}/misclassified.png?true=${i}&predicted=${j}&epoch=${c.epoch}`,
      alt: `validation images of ${c.class_names[i]} taken for ${c.class_names[j]}`}));
    parts.push(h("h2", {}, `Confusion matrix (validation, epoch ${c.epoch}, accuracy ${fmt(c.accuracy)})`),
      images ? h("p", {class: "muted"}, "Click a count of mistakes to see those images.") : "",
      h("table", {id: "confusion", class: "confusion"},
        h("tr", {}, h("th", {}, "true \\ predicted"), c.class_names.map((n) => h("th", {}, n)), h("th", {}, "accuracy")),
        c.matrix.map((row, i) => h("tr", {}, h("th", {}, c.class_names[i]), row.map((n, j) => {
          const style = `background: rgba(31, 119, 180, ${(n / max).toFixed(3)})`;
          return images && n && i !== j
            ? h("td", {style, class: "mistakes", "data-true": i, "data-predicted": j, onclick: () => show(i, j),
              title: `${n} ${c.class_names[i]} taken for ${c.class_names[j]}: click to see them`}, n)
            : h("td", {style}, n);
        }), h("td", {class: "class-accuracy"}, fmt(c.per_class_accuracy[i], 3)))),
        h("tr", {title: "of the images classified as each class, the share that were of it"}, h("th", {}, "precision"),
          c.per_class_precision.map((v) => h("td", {class: "class-precision"}, fmt(v, 3))), h("td", {}))),
      ...(images ? [mistakes, h("p", {}, h("a", {href: `/experiments/${e.id}/misclassified.png`}, "most confident mistakes"))] : []));
  }
  if (e.spec.task === "regression" && e.best) {
    parts.push(h("h2", {}, "Predicted vs actual (validation, best epoch)"),
      h("img", {id: "predicted-vs-actual", class: "figure", src: `/experiments/${e.id}/predicted-vs-actual.png`,
        alt: "each validation example's predicted target against its actual one"}));
  }
  if (e.best) {
    // Its first layer's filters (a conv net) or units (a linear layer on the pixels: a linear model's, one a class);
    // for a table, each unit's weight on each feature (a linear regression's coefficients).
    const weights = h("img", {id: "weights", class: "figure", src: `/experiments/${e.id}/weights.png`,
      alt: "the weights of the model's first layer", onerror: () => weights.replaceWith(
        h("p", {class: "muted"}, "Its first layer with weights does not see the input itself: nothing to show."))});
    parts.push(h("h2", {}, "First layer's weights (best epoch)"), weights);
    // The training loss's gradient at each layer: a forward and backward pass on the server, so only once opened.
    const gradients = h("img", {id: "gradients", class: "figure", alt: "the training loss's gradient at each layer"});
    const opened = h("details", {id: "gradients-box", ontoggle: () => {
      if (opened.open && !gradients.getAttribute("src")) gradients.src = `/experiments/${e.id}/gradients.png`;
    }}, h("summary", {}, "Gradients by layer (best epoch): do they vanish on the way back to the first layers?"),
    gradients);
    parts.push(opened);
  }
  box.replaceChildren(...parts);
}

// What the model says of new inputs: an image dropped or chosen; for a model of a table, a row typed in, one
// number a column (the dataset's means to start from, each column's range beside it).
function predictPanel(id, experiment, dataset) {
  const result = h("div", {id: "prediction"});
  const box = h("div", {}, result);
  // `after`: what to show below a prediction, once there is one.
  let asked = 0;  // each stroke on the pad asks again: only the newest question's answer is shown
  async function ask(path, options, after = []) {
    const mine = ++asked;
    try {
      const p = await api(`/experiments/${id}/${path}`, {method: "POST", ...options});
      if (mine !== asked) return;
      const classes = p.probabilities || p.classes?.[0];
      result.replaceChildren(...(classes ? [h("p", {}, "Prediction: ", h("strong", {class: "predicted"}, classes[0].class_name),
        ` (epoch ${p.epoch})`), ...classes.map((c) => h("div", {class: "bar-row"}, h("span", {class: "bar-label"}, c.class_name),
        h("span", {class: "bar", style: `width: ${(c.probability * 100).toFixed(1)}%`}),
        h("span", {class: "bar-value"}, fmt(c.probability, 3))))]
        : [h("p", {}, "Prediction: ", h("strong", {class: "predicted"}, +p.values[0].toPrecision(5)), ` (epoch ${p.epoch})`)]),
        ...outsideNote(p), ...after);
    } catch (err) {
      if (mine === asked) result.replaceChildren(h("p", {class: "error"}, err.message));
    }
  }
  dataset.then((d) => {
    if (d?.ink) box.prepend(imageDrop(id, ask), sketchPad(id, ask, d));  // grayscale images
    else if (d) box.prepend(d.features ? rowForm(d.features, ask) : imageDrop(id, ask));
    else box.prepend(experiment.spec.task === "regression"  // its dataset deleted since: the model still answers
      ? h("p", {class: "muted"}, "A table's model: POST rows to /predict/rows.") : imageDrop(id, ask));
  });
  return box;
}

// Where an image or the row lies outside what the model learnt from (a table's values, an image's brightness),
// a note saying so; none otherwise.
function outsideNote(p) {
  const outside = Array.isArray(p.outside_training_range) ? p.outside_training_range[0] : p.outside_training_range;
  return outside ? [h("p", {class: "warning"},
    `${outside}: outside what the model learnt from, so its prediction extrapolates`)] : [];
}

function imageDrop(id, ask) {
  const input = h("input", {type: "file", id: "predict-file", accept: "image/png,image/jpeg,image/webp"});
  const drop = h("div", {class: "drop"}, "Drop a PNG, JPEG or WebP image here, paste one (Ctrl+V), or ", input);
  const send = (file) => askImage(id, ask, file);
  input.addEventListener("change", () => input.files[0] && send(input.files[0]));
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files[0]) send(ev.dataTransfer.files[0]);
  });
  // An image pasted anywhere on the page (a screenshot, an image copied in a browser), while the page shows this.
  document.addEventListener("paste", function pasted(ev) {
    if (!drop.isConnected) return document.removeEventListener("paste", pasted);
    const file = [...(ev.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (!file || ev.target.closest?.("textarea, input")) return;  // text pasted into a field stays text
    ev.preventDefault();
    send(file);
  });
  return drop;
}

function askImage(id, ask, file, after = []) {
  ask("predict?top_k=5", {body: fileForm(file)}, [...after, imageFigures(id, file)]);
}

// A pad to draw on, in the ink of the dataset's images (light on dark, or dark on light); each stroke sends the
// drawing framed as they are (`framed`), and shows what went.
const PAD = 280;
const PEN = 22;

function sketchPad(id, ask, dataset) {
  const colors = dataset.ink.color === "light" ? {paper: "#000", pen: "#fff"} : {paper: "#fff", pen: "#000"};
  const canvas = h("canvas", {id: "sketch", class: "sketch", width: PAD, height: PAD, role: "img",
    "aria-label": "a pad to draw on with the mouse or a finger; each stroke asks the model"});
  const strokes = [];  // each a list of points on the pad
  const redraw = () => paint(canvas, strokes, PEN, colors);
  const clear = () => { strokes.length = 0; redraw(); };
  redraw();
  const at = (ev) => {
    const r = canvas.getBoundingClientRect();
    return [(ev.clientX - r.left) * PAD / r.width, (ev.clientY - r.top) * PAD / r.height];
  };
  let drawing = false;
  canvas.addEventListener("pointerdown", (ev) => {
    drawing = true;
    canvas.setPointerCapture(ev.pointerId);
    strokes.push([at(ev)]);
    redraw();
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!drawing) return;
    strokes.at(-1).push(at(ev));
    redraw();
  });
  canvas.addEventListener("pointerup", async () => {
    drawing = false;
    const file = await framed(strokes, dataset, colors);
    if (!file) return;
    const [height, width] = dataset.input_shape.slice(1);
    const sent = h("img", {id: "sketch-sent", class: "sketch-sent", src: URL.createObjectURL(file),
      alt: `the drawing as sent: ${width}x${height} pixels`, title: `what was sent: ${width}x${height} pixels`});
    askImage(id, ask, file, [h("p", {class: "muted"}, "Sent as ", sent, ` (${width}×${height}: the drawing framed as `,
      `${dataset.name}'s images are: its box ${Math.round(dataset.ink.extent * 100)}% of the frame, its strokes `,
      `${+(dataset.ink.stroke * Math.max(width, height)).toFixed(1)} pixels wide)`)]);
  });
  return h("div", {class: "sketch-pad"},
    h("p", {}, `Or draw one, ${colors.pen === "#fff" ? "white on black" : "black on white"}: `,
      h("button", {type: "button", id: "sketch-clear", onclick: clear}, "Clear")),
    canvas);
}

// `strokes` on `canvas` (moved by `offset`) with a round pen `width` wide; a stroke of one point is a dot.
function paint(canvas, strokes, width, {paper, pen}, offset = 0) {
  const context = canvas.getContext("2d");
  context.fillStyle = paper;
  context.fillRect(0, 0, canvas.width, canvas.height);
  Object.assign(context, {strokeStyle: pen, lineWidth: width, lineCap: "round", lineJoin: "round"});
  for (const points of strokes) {
    context.beginPath();
    context.moveTo(points[0][0] + offset, points[0][1] + offset);
    for (const [x, y] of points) context.lineTo(x + offset, y + offset);
    context.stroke();
  }
}

// The drawing framed as the dataset's images are, as MNIST's digits were made (LeCun et al.): in an image of the
// model's input size, its box scaled, keeping its shape, so that its larger side spans `ink.extent` of the
// frame's larger side, and moved so that its centre of mass is the image's centre as far as the box stays inside;
// drawn with the pen whose width gives it strokes as wide as the images' (`ink.stroke` of the frame's larger side:
// thin for MNIST, thick for scikit-learn's 8x8 digits). A PNG file; null where nothing is drawn.
async function framed(strokes, {ink, input_shape: [, height, width]}, colors) {
  if (!strokes.length) return null;
  const weight = ink.color === "light" ? (v) => v : (v) => 255 - v;  // how much ink a pixel holds
  const wanted = ink.stroke * Math.max(width, height);
  let [thin, thick] = [1, 120];
  let out;
  for (let step = 0; step < 8; step++) {  // the pen's width by bisection: the framed strokes widen with it
    const pen = (thin + thick) / 2;
    out = frame(strokes, pen, ink, [width, height], colors, weight);
    if (strokeWidth(out, weight) < wanted) thin = pen;
    else thick = pen;
  }
  const blob = await new Promise((resolve) => out.toBlob(resolve, "image/png"));
  return new File([blob], "drawing.png", {type: "image/png"});
}

function frame(strokes, penWidth, ink, [width, height], colors, weight) {
  const margin = Math.ceil(penWidth / 2);  // the pen's round ends stay on the canvas
  const pad = Object.assign(document.createElement("canvas"), {width: PAD + 2 * margin, height: PAD + 2 * margin});
  paint(pad, strokes, penWidth, colors, margin);
  const [left, top, across, down] = inkBox(pad, weight);
  const scale = ink.extent * Math.max(width, height) / Math.max(across, down);
  const [boxWidth, boxHeight] = [across * scale, down * scale];
  const box = blank(width, height, colors.paper);
  box.getContext("2d").drawImage(pad, left, top, across, down,
    (width - boxWidth) / 2, (height - boxHeight) / 2, boxWidth, boxHeight);
  const [cx, cy] = centreOfMass(box, weight);
  // By whole pixels (a fraction would blur it), and no further than keeps the box inside the frame.
  const shift = (centre, size, extent) => {
    const room = (size - extent) / 2;
    return Math.round(Math.max(-room, Math.min(room, size / 2 - centre)));
  };
  const out = blank(width, height, colors.paper);
  out.getContext("2d").drawImage(box, shift(cx, width, boxWidth), shift(cy, height, boxHeight));
  return out;
}

function blank(width, height, paper) {
  const canvas = Object.assign(document.createElement("canvas"), {width, height});
  const context = canvas.getContext("2d");
  context.fillStyle = paper;
  context.fillRect(0, 0, width, height);
  context.imageSmoothingQuality = "high";
  return canvas;
}

// The box around a canvas's pixels that hold any ink: [left, top, width, height].
function inkBox(canvas, weight) {
  let [top, bottom, left, right] = [Infinity, -1, Infinity, -1];
  pixelWeights(canvas, weight).forEach((v, i) => {
    if (v === 0) return;
    const [x, y] = [i % canvas.width, Math.floor(i / canvas.width)];
    [top, bottom, left, right] = [Math.min(top, y), Math.max(bottom, y), Math.min(left, x), Math.max(right, x)];
  });
  return [left, top, right - left + 1, bottom - top + 1];
}

function pixelWeights(canvas, weight) {
  const {width, height} = canvas;
  const pixels = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  return Array.from({length: width * height}, (_, i) => weight(pixels[i * 4]));
}

// The width of a canvas's strokes as the API measures the images' (worker/ink.py): twice the ink's area over the
// length of its outline, a pixel being ink where it holds over a quarter of the most a pixel can.
function strokeWidth(canvas, weight) {
  const {width, height} = canvas;
  const inked = pixelWeights(canvas, weight).map((v) => v > 255 / 4);
  const at = (x, y) => x >= 0 && y >= 0 && x < width && y < height && inked[y * width + x];
  let [area, outline] = [0, 0];
  inked.forEach((ink, i) => {
    if (!ink) return;
    const [x, y] = [i % width, Math.floor(i / width)];
    area += 1;
    outline += [[x - 1, y], [x + 1, y], [x, y - 1], [x, y + 1]].filter(([u, v]) => !at(u, v)).length;
  });
  return outline ? 2 * area / outline : 0;
}

// Of a canvas's pixels, each weighed by `weight` of its brightness (pixel centres at +0.5).
function centreOfMass(canvas, weight) {
  const weights = pixelWeights(canvas, weight);
  let [mass, mx, my] = [0, 0, 0];
  weights.forEach((v, i) => {
    const [x, y] = [i % canvas.width, Math.floor(i / canvas.width)];
    [mass, mx, my] = [mass + v, mx + v * (x + 0.5), my + v * (y + 0.5)];
  });
  return [mx / mass, my / mass];
}

function fileForm(file) {
  const form = new FormData();
  form.append("file", file);
  return form;
}

// Figures the server draws of the image, on request (a second or so each): what each layer of the model makes
// of it, and which of its pixels sway the predicted class's score most.
function imageFigures(id, file) {
  const figure = h("div", {id: "image-figure"});
  const button = (buttonId, name, text, alt) => h("button", {type: "button", id: buttonId, onclick: async () => {
    const response = await fetch(`/experiments/${id}/${name}.png`, {method: "POST", body: fileForm(file)});
    if (response.ok) {
      figure.replaceChildren(h("img", {id: name, class: "figure wide", src: URL.createObjectURL(await response.blob()), alt,
        onload: (ev) => URL.revokeObjectURL(ev.target.src)}));  // drawn: the blob is no longer needed
    } else {
      const body = await response.json().catch(() => null);
      figure.replaceChildren(h("p", {class: "error"}, describe(body?.detail) || response.statusText));
    }
  }}, text);
  return h("div", {},
    button("show-layers", "activations", "What each layer makes of it", "the image and what each layer of the model makes of it"),
    " ", button("show-saliency", "saliency", "Which pixels sway it", "how much each pixel of the image sways the predicted class"),
    figure);
}

function rowForm(features, ask) {
  const short = (v) => +v.toPrecision(4);
  const inputs = features.map((f) => h("input", {type: "number", step: "any", required: true, name: f.name,
    value: short(f.mean)}));
  const form = h("form", {id: "predict-row", class: "row-form"},
    features.map((f, i) => h("label", {}, h("span", {}, f.name), inputs[i],
      h("span", {class: "muted"}, f.min === null ? "" : `${short(f.min)} to ${short(f.max)}`))),
    h("button", {type: "submit", id: "predict-row-submit"}, "Predict"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    ask("predict/rows?top_k=5", {headers: {"content-type": "application/json"},
      body: JSON.stringify({rows: [inputs.map((input) => Number(input.value))]})});
  });
  return form;
}

// -- submit -------------------------------------------------------------------------------------------------

// MiB, or KiB below one: a small model's training memory would read as "0 MiB".
function size(bytes) {
  return bytes >= 2 ** 20 ? `${(bytes / 2 ** 20).toFixed(0)} MiB` : `${Math.max(bytes / 2 ** 10, 1).toFixed(0)} KiB`;
}

// The spec editor, holding a first CNN, or (?from=ID) that experiment's spec; the examples/ requests (GET
// /examples), one for each step of the learning path, replace it when picked.
async function submitView(params) {
  const from = params.get("from");
  const start = from ? (await api(`/experiments/${from}`)).spec : EXAMPLE_SPEC;
  const editor = h("textarea", {id: "spec", rows: 18, spellcheck: "false"}, JSON.stringify(start, null, 2));
  const feedback = h("div", {id: "feedback"});
  const examples = h("select", {id: "example"}, h("option", {value: ""}, "an example…"));
  api("/examples").then((list) => {
    const bodies = new Map(list.map((e) => [e.file, e.body]));
    examples.append(...list.map((e) => h("option", {value: e.file},
      `${e.endpoint === "/sweeps" ? "sweep: " : ""}${e.name} (${e.file})`)));
    examples.addEventListener("change", () => {
      if (!bodies.has(examples.value)) return;
      editor.value = JSON.stringify(bodies.get(examples.value), null, 2);
      feedback.replaceChildren();
    });
  });
  function parsed() {
    try { return JSON.parse(editor.value); } catch (err) {
      feedback.replaceChildren(h("pre", {class: "error"}, `Not valid JSON: ${err.message}`));
      return null;
    }
  }
  // A sweep is a body with a `base` spec: its base is what can be validated before submitting (every trial is
  // checked when the sweep is submitted).
  const isSweep = (body) => body !== null && typeof body === "object" && "base" in body;
  async function validate() {
    const body = parsed();
    if (!body) return;
    const spec = isSweep(body) ? body.base : body;
    try {
      const v = await api("/experiments:validate", {method: "POST", headers: {"content-type": "application/json"},
        body: JSON.stringify(spec)});
      const parts = Object.entries(v.memory).filter(([, n]) => n).map(([name, n]) => `${name.replaceAll("_", " ")} ${size(n)}`);
      feedback.replaceChildren(h("p", {class: "ok"}, isSweep(body) ? "The sweep's base spec is valid: " : "Valid: ",
        `${v.parameters.toLocaleString()} parameters `,
        `(${v.trainable_parameters.toLocaleString()} trained), about ${size(v.estimated_memory_bytes)} to train `,
        `(${parts.join(", ")}); `,
        `input ${v.input_shape.join("×")}`),
        ...v.warnings.map((w) => h("p", {class: "warning"}, `⚠ ${w}`)),
        h("table", {id: "layers"}, h("tr", {}, h("th", {}, "#"), h("th", {}, "layer"), h("th", {}, "output shape"), h("th", {}, "parameters")),
          v.layers.map((l) => h("tr", {}, h("td", {}, l.index), h("td", {}, l.kind), h("td", {}, l.output_shape.join("×")),
            h("td", {}, l.parameters.toLocaleString())))),
        h("details", {}, h("summary", {}, "In PyTorch"), h("pre", {id: "model-code", class: "spec"}, v.model_code)));
    } catch (err) {
      feedback.replaceChildren(h("pre", {class: "error"}, err.message));
    }
  }
  async function submit() {
    const body = parsed();
    if (!body) return;
    const kind = isSweep(body) ? "sweeps" : "experiments";
    try {
      const created = await api(`/${kind}`, {method: "POST", headers: {"content-type": "application/json"},
        body: JSON.stringify(body)});
      location.hash = `#/${kind}/${created.id}`;
    } catch (err) {
      feedback.replaceChildren(h("pre", {class: "error"}, err.message));
    }
  }
  view.replaceChildren(h("h1", {}, "Submit an experiment or a sweep"),
    h("p", {class: "muted"}, "Edit the spec (JSON; the API docs list every field), validate it, then submit. ",
      "A sweep is a base spec and the values to try: {\"base\": {...}, \"grid\": {\"optimizer.lr\": [0.01, 0.1]}}.",
      from ? ` It starts as experiment #${from}'s.` : ""),
    h("p", {}, "Or start from ", examples),
    editor, h("p", {}, h("button", {id: "validate", onclick: validate}, "Validate"), " ",
      h("button", {id: "submit", class: "primary", onclick: submit}, "Submit")), feedback);
}

// -- compare --------------------------------------------------------------------------------------------------

// What each task records, its best epochs' metric first (as GET /experiments/compare.png chooses).
const RECORDED = {
  classification: ["val_accuracy", "val_loss", "train_loss", "train_accuracy", "lr"],
  regression: ["val_loss", "val_mae", "val_rmse", "val_r2", "train_loss", "train_mae", "lr"],
};

// Each experiment with its metrics rows, and the metrics all their tasks record.
async function loadRuns(ids) {
  const runs = await Promise.all(ids.map(async (id) => {
    const [e, rows] = await Promise.all([api(`/experiments/${id}`), api(`/experiments/${id}/metrics`)]);
    return {label: `#${e.id} ${e.name}`, task: e.spec.task, rows};
  }));
  const tasks = [...new Set(runs.map((r) => r.task))];
  const metrics = tasks.length ? RECORDED[tasks[0]].filter((m) => tasks.every((t) => RECORDED[t].includes(m)))
    : RECORDED.classification;
  return {runs, metrics};
}

function comparisonChart(runs, metric) {
  const series = runs.map((r, i) => ({label: r.label, points: r.rows.map((row) => [row.epoch, row[metric]]),
    color: COLORS[i % COLORS.length]}));
  if (metric === "train_loss") {  // and each run's loss within its epochs, in its colour: how fast each starts
    runs.forEach((r, i) => series.push({label: `${r.label}, within epochs`, points: lossWithinEpochs(r.rows),
      color: COLORS[i % COLORS.length], thin: true, unlisted: true}));
  }
  return lineChart(series, {title: metric, width: 720, height: 360});
}

// Experiments side by side: their curves of one metric, labelled by what sets them apart (their names often
// share all but a suffix), and a table of those differences with each best epoch against the first's.
async function compareView(params) {
  const ids = (params.get("ids") || "").split(",").filter(Boolean);
  const [{runs, metrics}, found] = await Promise.all([loadRuns(ids),
    ids.length > 1 ? api(`/experiments/compare?ids=${ids.join(",")}`) : null]);
  const metric = metrics.includes(params.get("metric")) ? params.get("metric") : metrics[0];
  const select = h("select", {id: "metric", onchange: (ev) => { location.hash = `#/compare?ids=${ids.join(",")}&metric=${ev.target.value}`; }},
    metrics.map((m) => h("option", {value: m, selected: m === metric}, m)));
  const box = h("div", {id: "comparison", class: "charts"});
  view.replaceChildren(h("h1", {}, "Compare"), h("p", {}, "Metric: ", select,
    ids.length ? ` experiments ${ids.join(", ")}` : " — tick experiments in the table, then “Compare selected”."), box);
  if (!ids.length) return;
  if (found) {
    runs.forEach((r, i) => { if (found.labels[i]) r.label = `#${ids[i]} ${found.labels[i]}`; });
    const delta = (v) => (v === null ? "" : ` (${v >= 0 ? "+" : ""}${fmt(v)})`);
    view.append(h("table", {id: "differences"},
      h("tr", {}, ["experiment", "name", "what differs", "best val acc", "best val loss"].map((c) => h("th", {}, c))),
      found.experiments.map((e, i) => h("tr", {"data-id": e.id},
        h("td", {}, h("a", {href: `#/experiments/${e.id}`}, `#${e.id}`)), h("td", {}, e.name),
        h("td", {class: "differs"}, found.labels[i] || "the same spec"),
        h("td", {}, fmt(found.best_val_accuracy[i]), i ? delta(found.best_val_accuracy_vs_first[i]) : ""),
        h("td", {}, fmt(found.best_val_loss[i]), i ? delta(found.best_val_loss_vs_first[i]) : "")))));
  }
  box.replaceChildren(comparisonChart(runs, metric));
}

// -- sweeps -----------------------------------------------------------------------------------------------------

function sweepsView() {
  const body = h("tbody");
  view.replaceChildren(h("h1", {}, "Sweeps"),
    h("p", {class: "muted"}, "One base spec, values to try at spec paths, one experiment per trial: ",
      "POST /sweeps, or trainlab sweep FILE (examples/sweep-*.json)."),
    h("table", {id: "sweeps"}, h("thead", {}, h("tr", {}, ["id", "name", "finished", "best val acc", "best val loss",
      "created"].map((c) => h("th", {}, c)))), body));
  async function refresh() {
    const sweeps = await api("/sweeps?limit=100");
    body.replaceChildren(...sweeps.map((s) => h("tr", {"data-id": s.id},
      h("td", {}, h("a", {href: `#/sweeps/${s.id}`}, s.id)), h("td", {}, h("a", {href: `#/sweeps/${s.id}`}, s.name)),
      h("td", {}, `${s.finished}/${s.trials}`), h("td", {}, fmt(s.best_val_accuracy)), h("td", {}, fmt(s.best_val_loss)),
      h("td", {}, new Date(s.created_at).toLocaleString()))));
    if (!sweeps.length) body.append(h("tr", {}, h("td", {colspan: 6}, "No sweeps yet.")));
  }
  refresh();
  const timer = setInterval(refresh, 2000);
  cleanup = () => clearInterval(timer);
}

// For each number a sweep varied over three or more values (a learning rate, a batch size): the trials' best
// validation metric against it, a line for each combination of the other values tried; on a log scale where the
// values span a factor of ten or more. Where a learning rate is too low, right, or too high, at a glance.
function valueCharts(trials) {
  const regression = trials.every((t) => t.best_val_accuracy === null);
  const metric = regression ? "best_val_loss" : "best_val_accuracy";
  const paths = Object.keys(trials[0]?.params || {});
  return paths.filter((path) => trials.every((t) => typeof t.params[path] === "number")
    && new Set(trials.map((t) => t.params[path])).size >= 3).map((path) => {
    const lines = new Map();  // the other paths' values -> [value, metric] points
    for (const t of trials.filter((t) => t[metric] !== null)) {
      const others = paths.filter((p) => p !== path).map((p) => `${p}=${JSON.stringify(t.params[p])}`).join(", ");
      lines.set(others, [...(lines.get(others) || []), [t.params[path], t[metric]]]);
    }
    const values = trials.map((t) => t.params[path]);
    const logX = Math.min(...values) > 0 && Math.max(...values) >= 10 * Math.min(...values);
    const series = [...lines].map(([others, points]) => ({label: others || path,
      points: points.sort((a, b) => a[0] - b[0])}));
    return lineChart(series, {title: `${metric.replace("best_", "best ")} by ${path}`, xLabel: path, logX});
  });
}

// GET .../diagnosis's kinds of finding, as a sweep's trial table names them.
const FINDINGS = {overshooting: "steps too large", overfitting: "overfitting", not_learning: "not learning"};

// A sweep's trials best first, the values each tried, and their curves of the metric they are ranked by. Fetched
// whole, then drawn at once; fetched again 2 s after each drawing until every trial has finished.
async function sweepView(id) {
  let shown = true;  // until another view replaces this one
  let timer = null;
  cleanup = () => { shown = false; clearTimeout(timer); };
  for (;;) {
    const s = await api(`/sweeps/${id}`);
    const ids = s.trials.map((t) => t.experiment_id);
    const {runs, metrics} = await loadRuns(ids);
    if (!shown) return;
    runs.forEach((r, i) => { r.label = `#${ids[i]} ${s.trials[i].label}`; });  // the values tried
    const finished = s.trials.every((t) => FINISHED.includes(t.status));
    view.replaceChildren(h("h1", {}, `Sweep #${s.id} ${s.name}`),
      h("p", {}, `${s.trials.length} trials, best first · `, h("a", {href: `#/compare?ids=${ids.join(",")}`}, "compare")),
      finished ? actionButton("delete-sweep", "Delete sweep", async () => {
        if (!confirm(`Delete sweep #${s.id} and its ${ids.length} experiments? This cannot be undone.`)) return;
        await api(`/sweeps/${s.id}`, {method: "DELETE"});
        location.hash = "#/sweeps";
      }) : "",
      h("table", {id: "trials"}, h("tr", {}, ["rank", "experiment", "tried", "status", "best epoch", "val acc",
        "val loss"].map((c) => h("th", {}, c))),
        ...s.trials.map((t, i) => h("tr", {"data-id": t.experiment_id}, h("td", {}, i + 1),
          h("td", {}, h("a", {href: `#/experiments/${t.experiment_id}`}, `#${t.experiment_id}`)),
          h("td", {}, t.label, t.warnings.map((w) => h("div", {class: "warning"}, w))),
          h("td", {}, badge(t.status), t.findings.map((k) => h("div", {class: "finding"}, FINDINGS[k]))),
          h("td", {}, t.best_epoch ?? "–"),
          h("td", {}, fmt(t.best_val_accuracy)), h("td", {}, fmt(t.best_val_loss))))),
      h("div", {id: "comparison", class: "charts"}, comparisonChart(runs, metrics[0])),
      h("div", {id: "by-value", class: "charts"}, valueCharts(s.trials)));
    if (finished) return;
    await new Promise((resolve) => { timer = setTimeout(resolve, 2000); });
  }
}

// -- datasets ---------------------------------------------------------------------------------------------------

// The datasets, built in and uploaded (those can be deleted while no queued or running experiment uses them),
// and a form to upload one: a zip in ImageFolder layout, or a CSV with the column to predict.
async function datasetsView(message = "") {
  const datasets = await api("/datasets");
  const remove = (d) => actionButton(`delete-${d.name}`, "Delete", async () => {
    if (!confirm(`Delete dataset ${d.name}? This cannot be undone.`)) return;
    await api(`/datasets/${d.name}`, {method: "DELETE"});
    await datasetsView(`deleted ${d.name}`);
  });
  view.replaceChildren(h("h1", {}, "Datasets"), h("table", {id: "datasets"},
    h("tr", {}, ["name", "source", "task", "classes", "input", "size", "here", ""].map((c) => h("th", {}, c))),
    datasets.map((d) => h("tr", {"data-name": d.name}, h("td", {}, d.available && d.input_shape[1] > 1
      ? h("a", {href: `/datasets/${d.name}/samples.png`}, d.name) : d.name),
      h("td", {}, d.source), h("td", {}, d.task), h("td", {}, d.class_names.length),
      h("td", {}, d.input_shape.join("×")), h("td", {}, d.size.toLocaleString()), h("td", {}, d.available ? "yes" : "no"),
      h("td", {}, d.source === "uploaded" ? remove(d) : "")))),
    h("p", {id: "datasets-message", class: "ok"}, message), uploadForm());
}

function uploadForm() {
  const field = (label, input) => h("label", {}, h("span", {}, label), input);
  const name = h("input", {name: "name", required: true, placeholder: "how specs will name it"});
  const file = h("input", {type: "file", name: "file", required: true, accept: ".zip,.csv"});
  const size = h("input", {type: "number", name: "image_size", min: 8, max: 512, placeholder: "e.g. 224"});
  const target = h("input", {name: "target", placeholder: "the column to predict"});
  const task = h("select", {name: "task"}, ["regression", "classification"].map((t) => h("option", {value: t}, t)));
  const result = h("p", {id: "upload-result"});
  const form = h("form", {id: "upload", class: "upload-form"},
    field("name", name), field("file", file),
    h("span", {class: "muted hint"}, "a .zip of train/<class>/ (and optionally val/<class>/) PNG, JPEG or WebP images, or a .csv table with a header row"),
    field("zip: resize every image to (px)", size), field("CSV: column to predict", target), field("CSV: task", task),
    h("button", {type: "submit", id: "upload-submit"}, "Upload"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = new FormData();
    body.append("name", name.value);
    body.append("file", file.files[0]);
    if (size.value) body.append("image_size", size.value);
    if (file.files[0].name.toLowerCase().endsWith(".csv")) {
      body.append("target", target.value);
      body.append("task", task.value);
    }
    result.replaceChildren("uploading…");
    try {
      const d = await api("/datasets", {method: "POST", body});
      await datasetsView(`uploaded ${d.name}: ${d.description}`);
    } catch (err) {
      result.replaceChildren(h("span", {class: "error"}, err.message));
    }
  });
  return h("section", {}, h("h2", {}, "Upload a dataset"), form, result);
}

// -- routing ------------------------------------------------------------------------------------------------------

async function route() {
  cleanup();
  cleanup = () => {};
  const [path, query] = location.hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const match = path.match(/^\/experiments\/(\d+)$/);
  try {
    const sweep = path.match(/^\/sweeps\/(\d+)$/);
    if (match) await experimentView(match[1]);
    else if (sweep) await sweepView(sweep[1]);
    else if (path === "/sweeps") sweepsView();
    else if (path === "/submit") await submitView(params);
    else if (path === "/compare") await compareView(params);
    else if (path === "/datasets") await datasetsView();
    else listView();
  } catch (err) {
    view.replaceChildren(h("p", {class: "error"}, err.message));
  }
}

window.addEventListener("hashchange", route);
route();
