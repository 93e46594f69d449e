// nst-jax live: camera -> JPEG over a WebSocket -> stylized JPEG back -> canvas.
// The protocol is described in nst_jax/serve/protocol.py.
"use strict";

const KIND_FRAME = 1, KIND_UPLOAD = 2, KIND_RESULT = 1, KIND_SOURCE = 3;
// Frames in flight: a second frame is decoded while the first is in the model, and the first encoded and sent while
// the second is in it, so the model never waits for the network or the codecs (a pipeline of depth 2; the latency
// stays under two model calls). It pays for every model measured, fast or slow (benchmarks/RESULTS.md).
const FRAMES_IN_FLIGHT = 2;
const $ = (id) => document.getElementById(id);

// Everything the page knows, exposed for debugging and for the browser test.
const nst = window.nst = {
  connected: false, source: "browser", styles: [], sizes: [], limits: {}, caps: null, preserveModes: [],
  settings: { version: 0, styles: [], alpha: 1, preserve_color: "none", size: 256, side_by_side: false },
  smoothing: 0,  // statistic smoothing strength, this page's own (0: exact per-frame output)
  seq: 0, sent: new Map(), framesSent: 0, framesReceived: 0, lastVersion: -1, lastSeq: -1,
  resultTimes: [], latencies: [], errors: [], uploads: 0, cameraError: null, serverStats: null, maxInFlight: FRAMES_IN_FLIGHT,
  model: null, models: [], modelState: "ready",  // the model picker (serve.py --model a,b,c)
};

let ws = null;
let capturing = false;
let freshFrame = true;
let uploadSeq = 0;
const video = $("camera");
const input = $("input"), output = $("output");
const inputCtx = input.getContext("2d"), outputCtx = output.getContext("2d");

function setStatus(text, cls) {
  const el = $("status");
  el.textContent = text;
  el.className = "pill " + (cls || "");
}

function showError(message) {
  nst.errors.push(message);
  if (nst.errors.length > 50) nst.errors.shift();
  const li = document.createElement("li");
  li.textContent = message;
  const list = $("errors");
  list.prepend(li);
  while (list.children.length > 5) list.lastChild.remove();
}

// ---------------------------------------------------------------------------------------------------------------
// Connection

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { nst.connected = true; setStatus("connected", "ok"); };
  ws.onclose = (ev) => {
    nst.connected = false;
    setStatus(ev.code === 1001 ? "server stopped" : "disconnected", "bad");
    nst.sent.clear();
    setTimeout(connect, 2000);
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") onControl(JSON.parse(ev.data));
    else onBinary(ev.data);
  };
}

function onControl(msg) {
  switch (msg.type) {
    case "hello":
      nst.source = msg.source; nst.sizes = msg.sizes; nst.limits = msg.limits;
      nst.preserveModes = msg.preserve_color || ["none", "luminance", "histogram_output"];
      fillSizes();
      useModel(msg);
      if (nst.source === "browser") startCamera();
      else {
        $("input-caption").textContent = `server ${msg.source_label}`;
        $("latency").textContent = "n/a";  // no frame of ours to time: the server's camera feeds the stream
      }
      break;
    case "styles":
      setStyles(msg.styles);
      break;
    case "model":  // the picked model is loading, ready (its styles, caps and settings) or failed
      nst.models = msg.models || nst.models;
      nst.modelState = msg.state;
      if (msg.state === "ready") useModel(msg);
      else renderModels();
      break;
    case "uploaded":
      nst.uploads += 1;
      $("upload").value = "";
      choose(msg.style.id, false);
      break;
    case "settings":  // server-camera mode: another page changed the shared stream
      nst.settings = Object.assign({}, msg.settings, { side_by_side: nst.settings.side_by_side });
      renderGallery(); renderBlend(); syncControls();
      break;
    case "stats":
      nst.serverStats = msg;
      $("server").textContent = `server ${msg.server_fps} fps · batch ${msg.avg_batch} · ${msg.model_ms} ms` +
        (msg.source_error ? ` · ${msg.source_error}` : "");
      break;
    case "error":
      if (typeof msg.seq === "number") nst.sent.delete(msg.seq);
      showError(msg.message);
      pump();
      break;
  }
}

function onBinary(buf) {
  const view = new DataView(buf);
  const kind = view.getUint8(0), seq = view.getUint32(1), version = view.getUint32(5);
  const blob = new Blob([new Uint8Array(buf, 9)], { type: "image/jpeg" });
  if (kind === KIND_RESULT) {
    const now = performance.now();
    const t0 = nst.sent.get(seq);
    if (t0 !== undefined) {
      nst.latencies.push(now - t0);
      if (nst.latencies.length > 30) nst.latencies.shift();
    }
    // Latest frame wins on the server: a result answers its frame and every older one.
    for (const s of nst.sent.keys()) if (s <= seq) nst.sent.delete(s);
    createImageBitmap(blob).then((bmp) => {
      if (output.width !== bmp.width) { output.width = bmp.width; output.height = bmp.height; }
      outputCtx.drawImage(bmp, 0, 0);
      bmp.close();
      nst.framesReceived += 1;
      nst.lastVersion = version;
      nst.lastSeq = seq;
      nst.resultTimes.push(now);
      updateMeters();
    });
    pump();
  } else if (kind === KIND_SOURCE) {
    createImageBitmap(blob).then((bmp) => {
      if (input.width !== bmp.width) { input.width = bmp.width; input.height = bmp.height; }
      inputCtx.drawImage(bmp, 0, 0);
      bmp.close();
    });
  }
}

function meanLatency() {
  return nst.latencies.length ? nst.latencies.reduce((a, b) => a + b, 0) / nst.latencies.length : 0;
}

function updateMeters() {
  const now = performance.now();
  while (nst.resultTimes.length && now - nst.resultTimes[0] > 1000) nst.resultTimes.shift();
  $("fps").textContent = nst.resultTimes.length.toFixed(1);
  if (nst.latencies.length) $("latency").textContent = meanLatency().toFixed(0);
}
setInterval(updateMeters, 500);

// ---------------------------------------------------------------------------------------------------------------
// Camera and frames

async function startCamera() {
  if (video.srcObject) return;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    nst.cameraError = "this page has no camera access: browsers only allow cameras on https:// or localhost pages";
    showError(nst.cameraError);
    return;
  }
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    await video.play();
  } catch (e) {
    nst.cameraError = `camera: ${e.name}: ${e.message}`;
    showError(nst.cameraError);
    return;
  }
  if ("requestVideoFrameCallback" in video) {
    const onFrame = () => { freshFrame = true; pump(); video.requestVideoFrameCallback(onFrame); };
    video.requestVideoFrameCallback(onFrame);
  }
  setInterval(pump, 15);
  pump();
}

function pump() {
  if (nst.source !== "browser" || capturing || !ws || ws.readyState !== WebSocket.OPEN) return;
  if (!video.srcObject || video.readyState < 2 || !freshFrame) return;
  // A frame the server dropped (latest frame wins) or lost is forgotten after a few typical latencies.
  const now = performance.now();
  const forget = Math.max(2000, 4 * meanLatency());
  for (const [s, t] of nst.sent) if (now - t > forget) nst.sent.delete(s);
  if (nst.sent.size >= nst.maxInFlight) return;
  capturing = true;
  if ("requestVideoFrameCallback" in video) freshFrame = false;
  // Centre square crop of the camera, at the output size: the server never resizes a well-behaved frame.
  const size = nst.settings.size;
  if (input.width !== size) { input.width = size; input.height = size; }
  const vw = video.videoWidth, vh = video.videoHeight, side = Math.min(vw, vh);
  inputCtx.drawImage(video, (vw - side) / 2, (vh - side) / 2, side, side, 0, 0, size, size);
  input.toBlob((blob) => {
    capturing = false;
    if (!blob || ws.readyState !== WebSocket.OPEN) return;
    blob.arrayBuffer().then((jpeg) => {
      const seq = (nst.seq = (nst.seq + 1) >>> 0);
      const msg = new Uint8Array(5 + jpeg.byteLength);
      msg[0] = KIND_FRAME;
      new DataView(msg.buffer).setUint32(1, seq);
      msg.set(new Uint8Array(jpeg), 5);
      nst.sent.set(seq, performance.now());
      ws.send(msg);
      nst.framesSent += 1;
    });
  }, "image/jpeg", 0.85);
}

// ---------------------------------------------------------------------------------------------------------------
// Controls

function sendSettings() {
  nst.settings.version = (nst.settings.version + 1) >>> 0;
  // smoothing travels with the settings (the server keeps each page's smoothing state)
  const msg = Object.assign({ type: "settings" }, nst.settings, { smoothing: nst.smoothing });
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

// ---------------------------------------------------------------------------------------------------------------
// Model picker: hello and "model" messages carry the model's name, the lineup, its styles, caps and settings.

function useModel(msg) {
  nst.model = msg.model; nst.models = msg.models || [{ name: msg.model, state: "ready" }];
  nst.modelState = "ready";
  nst.caps = msg.caps || { style_images: true, style_table: false, alpha: true };
  $("smoothing-label").hidden = !msg.smoothing;
  nst.settings = Object.assign({}, msg.settings, { version: nst.settings.version + 1 });
  setStyles(msg.styles);
  applyCaps();
  syncControls();
  sendSettings();
  renderModels();
}

function renderModels() {
  $("model-name").textContent = nst.model || "-";
  const state = $("model-state"), busy = nst.modelState !== "ready";
  state.hidden = !busy;
  state.textContent = nst.modelState === "loading" ? `loading ${nst.pendingModel}…` : `${nst.pendingModel} failed`;
  state.className = "pill " + (nst.modelState === "failed" ? "bad" : "");
  const sel = $("model");
  sel.hidden = nst.models.length < 2;
  sel.replaceChildren();
  for (const m of nst.models) {
    const o = document.createElement("option");
    o.value = m.name; o.textContent = m.state === "ready" || m.name === nst.model ? m.name : `${m.name} (${m.state})`;
    sel.append(o);
  }
  sel.value = busy && nst.modelState === "loading" ? nst.pendingModel : nst.model;
}

$("model").addEventListener("change", () => {
  nst.pendingModel = $("model").value;
  if (nst.pendingModel === nst.model) return;
  nst.modelState = "loading";
  renderModels();
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "model", name: nst.pendingModel }));
});

function setStyles(styles) {
  nst.styles = styles;
  const ids = new Set(styles.map((s) => s.id));
  const kept = nst.settings.styles.filter(([id]) => ids.has(id));
  if (kept.length !== nst.settings.styles.length) {
    nst.settings.styles = kept.length ? kept : (styles.length ? [[styles[0].id, 1]] : []);
    if (nst.settings.styles.length) sendSettings();
  }
  renderGallery();
  renderBlend();
}

function choose(id, add) {
  const cur = nst.settings.styles;
  if (add) {
    const i = cur.findIndex(([sid]) => sid === id);
    if (i >= 0) { if (cur.length > 1) cur.splice(i, 1); }
    else if (cur.length < 8) cur.push([id, 1]);
  } else {
    nst.settings.styles = [[id, 1]];
  }
  renderGallery();
  renderBlend();
  sendSettings();
}

function renderGallery() {
  const g = $("gallery");
  g.replaceChildren();
  const selected = new Set(nst.settings.styles.map(([id]) => id));
  for (const s of nst.styles) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "style" + (selected.has(s.id) ? " selected" : "");
    b.dataset.id = s.id;
    b.title = `${s.name} (${s.origin})`;
    const img = document.createElement("img");
    img.src = s.thumb; img.alt = s.name;
    const name = document.createElement("span");
    name.className = "name"; name.textContent = s.name;
    const add = document.createElement("span");
    add.className = "add"; add.textContent = selected.has(s.id) ? "−" : "+";
    add.addEventListener("click", (ev) => { ev.stopPropagation(); choose(s.id, true); });
    b.append(img, name, add);
    b.addEventListener("click", (ev) => choose(s.id, ev.shiftKey));
    g.append(b);
  }
}

function renderBlend() {
  const box = $("blend");
  box.replaceChildren();
  const byId = new Map(nst.styles.map((s) => [s.id, s]));
  for (const entry of nst.settings.styles) {
    const [id, w] = entry;
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("span");
    label.textContent = byId.has(id) ? byId.get(id).name : id;
    const slider = document.createElement("input");
    slider.type = "range"; slider.min = "0"; slider.max = "100"; slider.value = String(Math.round(w * 100));
    slider.className = "weight"; slider.dataset.id = id;
    slider.disabled = nst.settings.styles.length < 2;
    const val = document.createElement("output");
    val.textContent = slider.value;
    slider.addEventListener("input", () => {
      entry[1] = Number(slider.value) / 100;
      val.textContent = slider.value;
      if (nst.settings.styles.some(([, x]) => x > 0)) sendSettings();
    });
    const rm = document.createElement("button");
    rm.type = "button"; rm.textContent = "×"; rm.title = "remove from the blend";
    rm.disabled = nst.settings.styles.length < 2;
    rm.addEventListener("click", () => choose(id, true));
    row.append(label, slider, val, rm);
    box.append(row);
  }
}

// What the model can do: a model with its own table of styles (CIN) shows that table as the gallery and takes
// no uploads; one without a content/style trade-off hides the strength slider.
function applyCaps() {
  $("upload-label").hidden = !nst.caps.style_images;
  $("alpha-label").hidden = nst.caps.alpha === false;
  const preserve = $("preserve");
  for (const option of preserve.options) option.hidden = !nst.preserveModes.includes(option.value);
}

function fillSizes() {
  const sel = $("size");
  sel.replaceChildren();
  for (const s of nst.sizes) {
    const o = document.createElement("option");
    o.value = String(s); o.textContent = `${s} × ${s}`;
    sel.append(o);
  }
}

function syncControls() {
  $("alpha").value = String(Math.round(nst.settings.alpha * 100));
  $("alpha-value").textContent = nst.settings.alpha.toFixed(2);
  $("preserve").value = nst.settings.preserve_color;
  $("size").value = String(nst.settings.size);
  $("sbs").checked = nst.settings.side_by_side;
  $("input-fig").hidden = !nst.settings.side_by_side;
}

$("alpha").addEventListener("input", () => {
  nst.settings.alpha = Number($("alpha").value) / 100;
  $("alpha-value").textContent = nst.settings.alpha.toFixed(2);
  sendSettings();
});
$("smoothing").addEventListener("input", () => {
  nst.smoothing = Number($("smoothing").value) / 100;
  $("smoothing-value").textContent = nst.smoothing.toFixed(2);
  sendSettings();
});
$("preserve").addEventListener("change", () => { nst.settings.preserve_color = $("preserve").value; sendSettings(); });
$("size").addEventListener("change", () => { nst.settings.size = Number($("size").value); sendSettings(); });
$("sbs").addEventListener("change", () => {
  nst.settings.side_by_side = $("sbs").checked;
  $("input-fig").hidden = !nst.settings.side_by_side;
  sendSettings();
});

$("upload").addEventListener("change", async () => {
  const file = $("upload").files[0];
  if (!file) return;
  if (nst.limits.upload_bytes && file.size > nst.limits.upload_bytes) {
    showError(`${file.name} is ${file.size} bytes; the server takes at most ${nst.limits.upload_bytes}`);
    return;
  }
  const data = new Uint8Array(await file.arrayBuffer());
  const name = new TextEncoder().encode(file.name).slice(0, 255);
  const msg = new Uint8Array(7 + name.length + data.length);
  const view = new DataView(msg.buffer);
  msg[0] = KIND_UPLOAD;
  view.setUint32(1, (uploadSeq = (uploadSeq + 1) >>> 0));
  view.setUint16(5, name.length);
  msg.set(name, 7);
  msg.set(data, 7 + name.length);
  ws.send(msg);
});

$("snapshot").addEventListener("click", () => {
  // What is shown: the stylized frame, with the camera frame beside it in side-by-side mode.
  const both = nst.settings.side_by_side;
  const c = document.createElement("canvas");
  c.width = output.width * (both ? 2 : 1); c.height = output.height;
  const ctx = c.getContext("2d");
  if (both) { ctx.drawImage(input, 0, 0, output.width, output.height); }
  ctx.drawImage(output, both ? output.width : 0, 0);
  c.toBlob((blob) => {
    const a = document.createElement("a");
    const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
    a.href = URL.createObjectURL(blob);
    a.download = `nst-snapshot-${stamp}.png`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }, "image/png");
});

connect();
