// The call check page: a shared tab/window or a camera -> WebRTC -> server; annotated video and
// verdict messages back (a row per face, a headline for the call, alerts with snapshots).
// Plain browser JavaScript, no build step. Signalling: POST /offer {sdp, type}; verdicts arrive as one
// JSON message per processed frame on the "verdicts" DataChannel (format in the README).
"use strict";

const TIMELINE_SECONDS = 20;
const FACE_FORGET_MS = 3000;
const NO_FACE_AFTER_MS = 1000;
const SILENT_AFTER_MS = 6000;
const STATE_COLOURS = { REAL: "#00c800", FAKE: "#ff2020", UNCERTAIN: "#ffbe00" };

const token = new URLSearchParams(location.search).get("token");
const element = (id) => document.getElementById(id);

// What tests (and curious people, from the console) can read.
const observed = {
  state: "idle",
  history: ["idle"],
  messages: 0,
  lastMessage: null,
  lastFaceMessage: null,
  facesSeen: 0,
  error: null,
  scan: null,
  scanError: null,
  source: null,
  switches: 0,
  rows: 0,
  headline: null,
  call: null,
  alerts: [],
  cameras: [],
};
window.streamDetector = observed;

function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function showStatus(text, { error = false, retry = false } = {}) {
  const status = element("status");
  status.hidden = false;
  status.classList.toggle("error", error);
  element("status-text").textContent = text;
  element("retry").hidden = !retry;
}

function hideStatus() {
  element("status").hidden = true;
}

function setState(state, detail = "") {
  observed.state = state;
  if (observed.history[observed.history.length - 1] !== state) observed.history.push(state);
  element("connection").textContent = detail ? `${state}: ${detail}` : state;
}

// ---------------------------------------------------------------------------------------------------
// The call: what is sent (a shared tab or window, or a camera), the connection, switching source.

// A shared call window is large, mostly still and holds several small faces: keep its full
// resolution (faces must stay large enough to judge) and spend the bitrate on detail, not motion.
const SCREEN_CONSTRAINTS = {
  video: { width: { max: 1920 }, height: { max: 1080 }, frameRate: { ideal: 15, max: 15 } },
  audio: false,
};
const SCREEN_MAX_BITRATE = 4_000_000;

let sending = null; // the MediaStream being sent
let sendingKind = null; // "screen" | "camera"
let sender = null; // the RTCRtpSender of the video
let connection = null;
let channel = null;
let checkStartedAt = 0;
let lastMessageAt = 0;
let lastFaceAt = 0;
let statsTimer = null;
let silenceTimer = null;
const faces = new Map(); // id -> {item, canvas, points: [{t, p, state}], lastSeen, state}

class CallError extends Error {
  constructor(state, message) {
    super(message);
    this.state = state;
  }
}

function chosenKind() {
  return document.querySelector('input[name="source"]:checked').value;
}

async function openScreen() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia(SCREEN_CONSTRAINTS);
  } catch (error) {
    if (error.name === "NotAllowedError" || error.name === "AbortError") {
      throw new CallError("share-denied", "Sharing was cancelled or refused. Pick the call's tab or window, then retry.");
    }
    throw new CallError("share-error", `The screen could not be shared (${error.name}).`);
  }
  const track = stream.getVideoTracks()[0];
  if (track && "contentHint" in track) track.contentHint = "detail";
  return stream;
}

async function openCamera() {
  const deviceId = element("camera-select").value;
  const video = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } };
  if (deviceId) video.deviceId = { exact: deviceId };
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video, audio: false });
  } catch (error) {
    if (error.name === "NotAllowedError" || error.name === "SecurityError") {
      throw new CallError("camera-denied", "Camera access was denied. Allow the camera for this page, then retry.");
    }
    if (error.name === "NotFoundError" || error.name === "OverconstrainedError") {
      throw new CallError("no-camera", "No camera was found. Connect one, then retry.");
    }
    if (error.name === "NotReadableError") {
      throw new CallError("camera-busy", "The camera is in use by another program. Close it, then retry.");
    }
    throw new CallError("camera-error", `The camera could not be opened (${error.name}).`);
  }
  // Device names are only readable once a camera has been allowed: fill the picker now.
  listCameras();
  return stream;
}

async function openSource(kind) {
  const stream = kind === "screen" ? await openScreen() : await openCamera();
  // The browser's own "Stop sharing" (or an unplugged camera) ends the track: the check ends there.
  for (const track of stream.getVideoTracks()) {
    track.addEventListener("ended", () => {
      if (sending === stream) sourceEnded(kind);
    });
  }
  return stream;
}

function stopStream(stream) {
  if (stream) for (const track of stream.getTracks()) track.stop();
}

async function listCameras() {
  if (!navigator.mediaDevices.enumerateDevices) return;
  const select = element("camera-select");
  const chosen = select.value;
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
  select.innerHTML = '<option value="">default camera</option>';
  devices.forEach((device, index) => {
    const option = document.createElement("option");
    option.value = device.deviceId;
    option.textContent = device.label || `camera ${index + 1}`;
    select.appendChild(option);
  });
  select.value = [...select.options].some((option) => option.value === chosen) ? chosen : "";
  observed.cameras = devices.map((device) => device.label);
}

function sendSourceKind() {
  if (channel && channel.readyState === "open") {
    channel.send(JSON.stringify({ type: "source", kind: sendingKind }));
  }
}

async function tuneSender() {
  if (!sender || sendingKind !== "screen") return;
  try {
    const parameters = sender.getParameters();
    if (!parameters.encodings || !parameters.encodings.length) parameters.encodings = [{}];
    parameters.encodings[0].maxFramerate = 15;
    parameters.encodings[0].maxBitrate = SCREEN_MAX_BITRATE;
    parameters.degradationPreference = "maintain-resolution";
    await sender.setParameters(parameters);
  } catch (error) {
    // Older browsers refuse some fields; the defaults still work.
  }
}

function waitForIceGathering(peer, timeoutMs) {
  // The server takes one offer with every candidate in it (no trickle), so wait for gathering.
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      peer.removeEventListener("icegatheringstatechange", check);
      clearTimeout(timer);
      resolve();
    };
    const check = () => {
      if (peer.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, timeoutMs);
    peer.addEventListener("icegatheringstatechange", check);
  });
}

async function start() {
  element("start").disabled = true;
  element("stop").disabled = false;
  observed.error = null;
  clearFaces();
  clearAlerts();
  const kind = chosenKind();
  try {
    setState(kind === "screen" ? "sharing" : "camera");
    showStatus(kind === "screen" ? "Pick the call's tab or window to share…" : "Starting the camera…");
    const stream = await openSource(kind);
    sending = stream;
    sendingKind = kind;
    element("local").srcObject = stream;
    setState("connecting");
    showStatus("Connecting to the server…");
    await connect(stream);
  } catch (error) {
    const state = error instanceof CallError ? error.state : "failed";
    observed.error = error.message;
    hangUp();
    stopStream(sending);
    sending = null;
    setState(state);
    showStatus(error.message, { error: true, retry: true });
    element("start").disabled = false;
    element("stop").disabled = true;
  }
}

async function connect(stream) {
  const peer = new RTCPeerConnection({ iceServers: [] });
  connection = peer;
  const track = stream.getVideoTracks()[0];
  sender = peer.addTrack(track, stream);
  await tuneSender();
  channel = peer.createDataChannel("verdicts");
  channel.onopen = sendSourceKind;
  channel.onmessage = (event) => onVerdicts(JSON.parse(event.data));
  channel.onclose = () => {
    if (connection === peer) lost("The verdict channel closed.");
  };

  peer.ontrack = (event) => {
    const video = element("returned");
    video.srcObject = event.streams[0] || new MediaStream([event.track]);
    video.play().catch(() => {});
  };
  peer.onconnectionstatechange = () => {
    if (connection !== peer) return;
    const state = peer.connectionState;
    if (state === "connected") {
      setState("connected");
      showStatus("Waiting for the first verdicts…");
    } else if (state === "failed" || state === "disconnected" || state === "closed") {
      lost(`The connection was lost (${state}).`);
    }
  };

  await peer.setLocalDescription(await peer.createOffer());
  await waitForIceGathering(peer, 3000);
  let response;
  try {
    response = await fetch("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ sdp: peer.localDescription.sdp, type: peer.localDescription.type }),
    });
  } catch (error) {
    throw new CallError("unreachable", "The server cannot be reached. Is it running?");
  }
  const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) {
    const state =
      response.status === 503 ? "busy" : response.status === 401 ? "unauthorised" : response.status === 429 ? "limited" : "refused";
    throw new CallError(state, `The server refused the call: ${answer.error || response.status}`);
  }
  await peer.setRemoteDescription(answer);

  checkStartedAt = performance.now();
  lastMessageAt = performance.now();
  statsTimer = setInterval(updateRoundTrip, 1000);
  silenceTimer = setInterval(checkSilence, 1000);
}

async function switchSource() {
  // Mid-call: the new picture goes out on the same connection (no new offer), the panel stays.
  const kind = chosenKind();
  if (!connection || !sender) return;
  let stream;
  try {
    stream = await openSource(kind);
  } catch (error) {
    observed.error = error.message;
    showStatus(`${error.message} The check goes on with what it had.`, { error: true });
    setTimeout(hideStatus, 4000);
    return;
  }
  const previous = sending;
  sending = stream;
  sendingKind = kind;
  await sender.replaceTrack(stream.getVideoTracks()[0]);
  await tuneSender();
  stopStream(previous);
  element("local").srcObject = stream;
  sendSourceKind();
  observed.switches += 1;
  observed.source = kind;
}

function lost(reason) {
  if (observed.state === "lost") return;
  hangUp();
  setState("lost");
  observed.error = reason;
  showStatus(`${reason} Retry to reconnect.`, { error: true, retry: true });
  element("start").disabled = false;
  element("stop").disabled = true;
}

function hangUp() {
  clearInterval(statsTimer);
  clearInterval(silenceTimer);
  const peer = connection;
  connection = null;
  sender = null;
  if (channel) {
    channel.onclose = null;
    channel.onmessage = null;
    channel.onopen = null;
    channel = null;
  }
  if (peer) peer.close();
  element("returned").srcObject = null;
}

function finish(state, text) {
  // The check ends; the headline, the faces and the alerts stay as the call's summary.
  hangUp();
  stopStream(sending);
  sending = null;
  element("local").srcObject = null;
  setState(state);
  const headline = element("headline-text").textContent;
  showStatus(`${text} Summary: ${headline}.`);
  element("start").disabled = false;
  element("stop").disabled = true;
}

function stop() {
  finish("stopped", "Stopped.");
}

function sourceEnded(kind) {
  finish("ended", kind === "screen" ? "Sharing stopped: the check has ended." : "The camera stopped: the check has ended.");
}

function checkSilence() {
  if (!connection || connection.connectionState !== "connected") return;
  if (performance.now() - lastMessageAt > SILENT_AFTER_MS) {
    lost("No verdicts have arrived for a while.");
  }
}

async function updateRoundTrip() {
  if (!connection) return;
  const report = await connection.getStats();
  report.forEach((entry) => {
    if (entry.type === "candidate-pair" && entry.nominated && entry.currentRoundTripTime !== undefined) {
      element("rtt").textContent = (entry.currentRoundTripTime * 1000).toFixed(0);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// The verdict panel: the call's headline, alerts, and a row per face (a gallery).

function duration(seconds) {
  const minutes = Math.floor(seconds / 60);
  const rest = Math.round(seconds % 60);
  return minutes ? `${minutes} min ${rest} s` : `${rest} s`;
}

function showHeadline(call) {
  if (!call) return;
  const box = element("headline");
  box.className = `headline ${call.verdict}`;
  element("headline-text").textContent = call.headline;
  element("checked-for").textContent = `checked for ${duration(call.checked_s)}, ${call.faces} face(s) seen`;
  observed.headline = call.headline;
  observed.call = call;
}

function onVerdicts(message) {
  if (message.type !== "verdicts") return;
  const now = performance.now();
  lastMessageAt = now;
  observed.messages += 1;
  observed.lastMessage = message;
  if (observed.state !== "live" && observed.state !== "no-face") hideStatus();

  element("fps").textContent = message.fps.toFixed(1);
  element("latency").textContent = message.latency_ms.toFixed(0);
  element("dropped").textContent = String(message.dropped);
  showHeadline(message.call);

  for (const face of message.faces) {
    observed.facesSeen += 1;
    updateFace(face, now, message.smallest_judged_px);
  }
  if (message.faces.length > 0) {
    lastFaceAt = now;
    observed.lastFaceMessage = message;
  }
  const noFace = now - lastFaceAt > NO_FACE_AFTER_MS;
  element("no-face").hidden = !noFace;
  setState(noFace ? "no-face" : "live");

  // A face out of view keeps its row (it may come back: the tracker gives it its id again).
  for (const entry of faces.values()) {
    const away = now - entry.lastSeen > FACE_FORGET_MS;
    entry.item.classList.toggle("away", away);
    if (away) entry.item.querySelector(".note").textContent = "not in view";
  }
  observed.rows = faces.size;
}

function updateFace(face, now, smallestPx) {
  let entry = faces.get(face.id);
  if (!entry) {
    const item = document.createElement("li");
    item.className = "face";
    item.dataset.id = String(face.id);
    item.innerHTML =
      '<div class="line"><span class="who"><img class="thumbnail" alt=""><strong class="id"></strong></span>' +
      '<span class="badge state"></span><span>p(fake) <span class="p-fake"></span></span></div>' +
      '<div class="note"></div><canvas width="300" height="40"></canvas>';
    // Stable order: by id, which is the order the faces first appeared in.
    const list = element("faces");
    const after = [...list.children].find((other) => Number(other.dataset.id) > face.id);
    list.insertBefore(item, after || null);
    entry = { item, canvas: item.querySelector("canvas"), points: [], lastSeen: now, state: null };
    faces.set(face.id, entry);
  }
  entry.lastSeen = now;
  entry.points.push({ t: now, p: face.p_smoothed, state: face.state });
  while (entry.points.length && now - entry.points[0].t > TIMELINE_SECONDS * 1000) entry.points.shift();
  entry.item.className = `face ${face.state}`;
  entry.item.querySelector(".id").textContent = `#${face.id}`;
  if (face.thumbnail) entry.item.querySelector(".thumbnail").src = face.thumbnail;
  const badge = entry.item.querySelector(".state");
  badge.textContent = face.state;
  badge.className = `badge state ${face.state}`;
  entry.item.querySelector(".p-fake").textContent = face.p_smoothed.toFixed(2);
  entry.item.querySelector(".note").textContent = face.too_small
    ? `face too small to judge (needs ${smallestPx || "more"} px): make the tile larger`
    : "";
  if (face.state === "FAKE" && entry.state !== "FAKE") raiseAlert(face);
  entry.state = face.state;
  drawTimeline(entry.canvas, entry.points, now);
}

function snapshot() {
  const video = element("returned");
  if (!video.videoWidth) return null;
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return canvas.toDataURL("image/jpeg", 0.85);
}

function beep() {
  try {
    const audio = new AudioContext();
    const tone = audio.createOscillator();
    tone.frequency.value = 880;
    tone.connect(audio.destination);
    tone.start();
    tone.stop(audio.currentTime + 0.3);
  } catch (error) {
    // No audio output: the visible alert is enough.
  }
}

function raiseAlert(face) {
  const when = new Date();
  const image = snapshot();
  const item = document.createElement("li");
  item.className = "alert";
  const text = document.createElement("span");
  text.textContent = `${when.toLocaleTimeString()}: face #${face.id} looks manipulated (p ${face.p_smoothed.toFixed(2)})`;
  if (image) {
    const picture = document.createElement("img");
    picture.src = image;
    picture.alt = `face #${face.id} at ${when.toLocaleTimeString()}`;
    item.appendChild(picture);
  }
  item.appendChild(text);
  if (image) {
    const save = document.createElement("a");
    save.href = image;
    save.download = `deepfake-alert-${when.toISOString().replace(/[:.]/g, "-")}-face${face.id}.jpg`;
    save.textContent = "save snapshot";
    item.appendChild(save);
  }
  element("alerts").prepend(item);
  if (element("alert-sound").checked) beep();
  observed.alerts.push({ time: when.toISOString(), id: face.id, p_smoothed: face.p_smoothed, snapshot: Boolean(image) });
}

function clearAlerts() {
  element("alerts").innerHTML = "";
  observed.alerts = [];
}

function drawTimeline(canvas, points, now) {
  // p(fake) over the last TIMELINE_SECONDS, coloured by the state at each moment; 0.5 dashed.
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  context.strokeStyle = "#444";
  context.setLineDash([3, 3]);
  context.beginPath();
  context.moveTo(0, height / 2);
  context.lineTo(width, height / 2);
  context.stroke();
  context.setLineDash([]);
  const x = (t) => width - ((now - t) / (TIMELINE_SECONDS * 1000)) * width;
  const y = (p) => height - 2 - p * (height - 4);
  for (let index = 1; index < points.length; index += 1) {
    const previous = points[index - 1];
    const point = points[index];
    context.strokeStyle = STATE_COLOURS[point.state] || "#999";
    context.lineWidth = 2;
    context.beginPath();
    context.moveTo(x(previous.t), y(previous.p));
    context.lineTo(x(point.t), y(point.p));
    context.stroke();
  }
}

function clearFaces() {
  for (const entry of faces.values()) entry.item.remove();
  faces.clear();
  element("no-face").hidden = true;
  element("headline").className = "headline";
  element("headline-text").textContent = "Not started.";
  element("checked-for").textContent = "";
  observed.rows = 0;
  observed.headline = null;
}

// ---------------------------------------------------------------------------------------------------
// File scan: POST /scan (multipart "file"), progress from the upload and from GET /scan/progress.

function scanStatus(text, { error = false } = {}) {
  const status = element("scan-status");
  status.textContent = text;
  status.classList.toggle("error", error);
}

function scanFile(file) {
  const job = Math.random().toString(36).slice(2, 12);
  const progress = element("scan-progress");
  progress.hidden = false;
  progress.value = 0;
  element("scan-result").hidden = true;
  observed.scan = null;
  observed.scanError = null;
  scanStatus(`Uploading ${file.name}…`);

  const form = new FormData();
  form.append("file", file, file.name);
  const request = new XMLHttpRequest();
  request.open("POST", `/scan?job=${job}`);
  for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);

  let poller = null;
  request.upload.onprogress = (event) => {
    if (event.lengthComputable) progress.value = (0.5 * event.loaded) / event.total;
  };
  request.upload.onload = () => {
    scanStatus(`Analysing ${file.name}…`);
    poller = setInterval(async () => {
      try {
        const reply = await fetch(`/scan/progress?job=${job}`, { headers: authHeaders() });
        const state = await reply.json();
        if (state.stage === "scan") progress.value = 0.5 + 0.5 * state.progress;
      } catch (error) {
        // The scan's own reply reports failures; a missed progress poll is harmless.
      }
    }, 300);
  };
  request.onloadend = () => {
    clearInterval(poller);
    progress.hidden = true;
    let body = null;
    try {
      body = JSON.parse(request.responseText);
    } catch (error) {
      body = null;
    }
    if (request.status === 200 && body && body.report) {
      showScan(body, file.name);
    } else {
      const reason = body && body.error ? body.error : request.status ? `HTTP ${request.status}` : "the server cannot be reached";
      observed.scanError = reason;
      scanStatus(reason.includes(file.name) ? reason : `${file.name}: ${reason}`, { error: true });
    }
  };
  request.send(form);
}

function format(value, digits = 2) {
  return typeof value === "number" ? value.toFixed(digits) : "–";
}

function showScan(body, name) {
  const report = body.report;
  observed.scan = report;
  scanStatus(`${name}: done.`);
  const verdict = element("scan-verdict");
  verdict.textContent = report.verdict;
  verdict.className = `badge ${report.verdict}`;
  element("scan-p-fake").textContent = format(report.p_fake);
  const summary = [];
  if (report.kind) summary.push(report.kind);
  if (typeof report.frames === "number") summary.push(`${report.frames} frames`);
  if (typeof report.duration_s === "number") summary.push(`${report.duration_s.toFixed(1)} s`);
  if (report.complete === false) summary.push("stopped early");
  element("scan-summary").textContent = summary.join(", ");

  const rows = element("scan-tracks").querySelector("tbody");
  rows.innerHTML = "";
  for (const track of report.tracks || []) {
    const row = document.createElement("tr");
    const cells = [`#${track.id}`, track.state, format(track.mean_p_fake), track.frames_seen ?? "–"];
    for (const value of cells) {
      const cell = document.createElement("td");
      cell.textContent = String(value);
      row.appendChild(cell);
    }
    row.children[1].className = `badge ${track.state}`;
    rows.appendChild(row);
  }
  element("scan-tracks").hidden = !(report.tracks || []).length;
  const image = element("scan-image");
  if (body.annotated) {
    image.src = body.annotated;
    image.hidden = false;
  } else {
    image.hidden = true;
  }
  element("scan-result").hidden = false;
}

function setUpScan() {
  const drop = element("drop");
  element("file").addEventListener("change", (event) => {
    if (event.target.files.length) scanFile(event.target.files[0]);
    event.target.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) scanFile(event.dataTransfer.files[0]);
  });
}

// ---------------------------------------------------------------------------------------------------

element("start").addEventListener("click", () => {
  observed.source = chosenKind();
  start();
});
element("stop").addEventListener("click", stop);
for (const radio of document.querySelectorAll('input[name="source"]')) {
  radio.addEventListener("change", () => {
    if (connection) switchSource();
  });
}
element("camera-select").addEventListener("change", () => {
  if (connection && chosenKind() === "camera") switchSource();
});
element("retry").addEventListener("click", () => {
  element("retry").hidden = true;
  start();
});
setUpScan();
if (!navigator.mediaDevices || !window.RTCPeerConnection) {
  setState("unsupported");
  showStatus("This browser cannot send a camera over WebRTC here (it needs https:// or localhost).", {
    error: true,
  });
  element("start").disabled = true;
} else {
  listCameras().catch(() => {});
  const wanted = new URLSearchParams(location.search).get("source");
  if (wanted === "camera" || wanted === "screen") document.querySelector(`input[value="${wanted}"]`).checked = true;
  if (new URLSearchParams(location.search).get("autostart") === "1") start();
}
