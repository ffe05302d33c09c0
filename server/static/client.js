// duplex web client: camera + microphone in, the avatar's video, voice and captions out.
// Plain JS, no build step. The call: 1. getUserMedia (preview), 2. an RTCPeerConnection with
// both local tracks and a data channel, 3. wait for ICE gathering (the server has no trickle
// ICE), 4. POST /offer, 5. the answer; then a ping every second on the data channel (the
// server ends a call whose page is silent for a few seconds), stats every second, and a
// watch on the server: events come several times a second, so silence means a dropped call.
// A busy or draining server (503) is called again after its Retry-After, a few times.
// `window.duplex` exposes the live call for diagnostics and tests.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), message: $("message"), remote: $("remote"), local: $("local"),
  placeholder: $("remote-placeholder"), captions: $("captions"), characters: $("characters"),
  picker: $("picker"), tokenRow: $("token-row"), token: $("token"), call: $("call"),
  hangup: $("hangup"), say: $("say"), text: $("text"), send: $("send"),
  latModel: $("lat-model"), latFrontend: $("lat-frontend"), latRtt: $("lat-rtt"), latFps: $("lat-fps"), quality: $("quality"),
};
const duplex = (window.duplex = {
  pc: null, dc: null, config: null, local: null, events: [], stats: {}, state: "idle",
  units: 0, // the avatar's units delivered in this page (one `latency` event a unit)
});
let timers = [];
let lastVideo = null; // {t, frames} for the fps readout
let lastHeard = 0; // performance.now() of the server's last data channel message
const SERVER_SILENCE_MS = 4000;
const BUSY_RETRIES = 3; // calls again after a 503, each after the server's Retry-After
let retriesLeft = BUSY_RETRIES;
let retryTimer = null;

function say(text, kind = "error") {
  ui.message.textContent = text;
  ui.message.className = kind;
  ui.message.hidden = !text;
}
function setStatus(text) { ui.status.textContent = text; }

function setState(state) {
  duplex.state = state;
  const inCall = state === "connecting" || state === "in-call" || state === "waiting";
  ui.call.disabled = inCall || !duplex.local;
  ui.hangup.disabled = !inCall;
  ui.picker.disabled = inCall;
  ui.text.disabled = ui.send.disabled = state !== "in-call";
  document.body.classList.toggle("in-call", state === "in-call");
}

// -- start-up: config, characters, camera ---------------------------------------------------
async function init() {
  try {
    const [config, chars] = await Promise.all([
      fetch("/config").then((r) => r.json()), fetch("/characters").then((r) => r.json()),
    ]);
    duplex.config = config;
    ui.tokenRow.hidden = !config.authRequired;
    ui.token.value = localStorage.getItem("duplex-token") || "";
    renderCharacters(chars);
  } catch (e) {
    say(`Cannot reach the server (${e.message}). Is duplex running?`);
    return;
  }
  await startCamera();
  setState("idle");
}

function renderCharacters({ default: def, characters }) {
  ui.characters.replaceChildren(...characters.map((c) => {
    const label = document.createElement("label");
    label.className = "character";
    label.title = c.persona;
    label.innerHTML = `<input type="radio" name="character"><img alt=""><span></span>`;
    const input = label.querySelector("input");
    input.value = c.id;
    input.checked = c.id === def;
    input.addEventListener("change", () => { ui.placeholder.src = c.image; });
    label.querySelector("img").src = c.image;
    label.querySelector("span").textContent = c.name;
    return label;
  }));
  ui.placeholder.src = characters.find((c) => c.id === def)?.image || "";
}

async function startCamera() {
  if (!navigator.mediaDevices?.getUserMedia) {
    say("This browser gives no camera access here: open the page over https or on localhost.");
    return;
  }
  try {
    duplex.local = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 320 }, height: { ideal: 240 }, frameRate: { ideal: 25 } },
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    ui.local.srcObject = duplex.local;
    setStatus("Ready to call");
  } catch (e) {
    const why = {
      NotAllowedError: "Camera and microphone access was refused. Allow both for this site in the " +
        "browser's settings (the icon in the address bar), then reload the page.",
      NotFoundError: "No camera or microphone was found. Connect one and reload the page.",
      NotReadableError: "The camera or microphone is busy in another application. Close it and reload.",
    }[e.name] || `The camera or microphone could not start: ${e.message}`;
    say(why);
    setStatus("No camera");
  }
}

// -- the call ---------------------------------------------------------------------------------
// ICE servers for this call: /config again (TURN credentials are minted per call and expire),
// with the token when there is one (credentials are handed out only with it).
async function iceServers() {
  try {
    const headers = ui.token.value ? { Authorization: `Bearer ${ui.token.value}` } : {};
    const r = await fetch("/config", { headers });
    if (r.ok) return (await r.json()).iceServers;
  } catch (e) { /* the offer will say what is wrong */ }
  return duplex.config.iceServers;
}

async function call() {
  say("");
  ui.captions.replaceChildren();
  setState("connecting");
  setStatus("Calling…");
  const pc = (duplex.pc = new RTCPeerConnection({ iceServers: await iceServers() }));
  duplex.local.getTracks().forEach((t) => pc.addTrack(t, duplex.local));
  const remote = new MediaStream();
  pc.ontrack = (e) => { remote.addTrack(e.track); ui.remote.srcObject = remote; ui.remote.play().catch(() => {}); };
  pc.onconnectionstatechange = () => {
    if (pc !== duplex.pc) return;
    if (pc.connectionState === "connected") { setState("in-call"); setStatus("In call"); }
    if (pc.connectionState === "failed") dropped("the network connection to the server failed");
    if (pc.connectionState === "closed") dropped("the server closed the connection");
  };
  const dc = (duplex.dc = pc.createDataChannel("duplex"));
  dc.onopen = () => {
    timers.push(setInterval(() => dc.readyState === "open" && dc.send(JSON.stringify({ type: "ping", t: Date.now() })),
      1000 * duplex.config.pingSeconds));
  };
  dc.onmessage = (e) => { lastHeard = performance.now(); onEvent(JSON.parse(e.data)); };
  dc.onclose = () => { if (pc === duplex.pc) dropped("the server closed the call without a reason"); };
  timers.push(setInterval(readStats, 1000));
  timers.push(setInterval(() => {
    if (duplex.state === "in-call" && lastHeard && performance.now() - lastHeard > SERVER_SILENCE_MS) {
      dropped(`nothing heard from the server for ${SERVER_SILENCE_MS / 1000} s`);
    }
  }, 1000));

  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, 3000);
    const headers = { "Content-Type": "application/json" };
    if (ui.token.value) {
      headers.Authorization = `Bearer ${ui.token.value}`;
      localStorage.setItem("duplex-token", ui.token.value);
    }
    const character = document.querySelector("input[name=character]:checked")?.value;
    const res = await fetch("/offer", {
      method: "POST", headers,
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", character }),
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) return refused(res, body);
    await pc.setRemoteDescription({ type: body.type, sdp: body.sdp });
  } catch (e) {
    stop();
    say(`The call could not start: ${e.message}`);
  }
}

function gathered(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { clearTimeout(timer); pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => pc.iceGatheringState === "complete" && done();
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

function refused(res, body) {
  stop();
  const reason = body.error || res.statusText;
  if (res.status === 503) {
    const wait = Number(res.headers.get("Retry-After")) || 2;
    const why = reason.charAt(0).toUpperCase() + reason.slice(1) + "."; // the server says why
    if (retriesLeft > 0) {
      retriesLeft -= 1;
      say(`${why} Calling again in ${wait} s (hang up to stop).`, "info");
      setStatus(`Busy — calling again in ${wait} s`);
      setState("waiting");
      retryTimer = setTimeout(call, wait * 1000);
    } else {
      say(why);
      setStatus(`Busy — try again in ${wait} s`);
    }
  } else if (res.status === 401) {
    ui.tokenRow.hidden = false;
    say(`Not authorized: ${reason}. Enter the access token and call again.`);
    setStatus("Not authorized");
  } else {
    say(`The server refused the call: ${reason}`);
    setStatus("Refused");
  }
}

function onEvent(ev) {
  duplex.events.push(ev);
  if (duplex.events.length > 500) duplex.events.splice(0, 100);
  if (ev.type === "caption") addCaption(ev.text);
  else if (ev.type === "latency") {
    duplex.units += 1;
    ui.latModel.textContent = `${ev.model_ms.toFixed(0)} ms`;
    ui.latFrontend.textContent = `${ev.in_ms == null ? "–" : ev.in_ms.toFixed(1)} / ${ev.out_ms.toFixed(1)} ms`;
    // the server lowers the solver's steps (and skips units) to keep real time on a slow machine
    const reduced = ev.steps < ev.top_steps;
    ui.quality.textContent = (reduced ? `reduced quality (${ev.steps} of ${ev.top_steps} steps)` : "full")
      + (ev.skipped ? `, ${ev.skipped} unit(s) skipped` : "");
    ui.quality.classList.toggle("reduced", reduced || ev.skipped > 0);
  } else if (ev.type === "text" && !ev.delivered) {
    addCaption("(not heard by the model: the call is ending or too much text is waiting)", "note");
  } else if (ev.type === "hello") setStatus(`In call with ${ev.character}`);
  else if (ev.type === "draining") {
    say(`This server is going down for maintenance: the call can go on for up to ${ev.seconds} s.`, "info");
  }
  else if (ev.type === "ended") {
    stop();
    say(`Call ended: ${ev.reason}.`, "info");
    setStatus("Call ended");
  }
}

function addCaption(text, cls) {
  const span = document.createElement("span");
  span.textContent = text;
  if (cls) { span.className = cls; span.textContent = `\n${text}\n`; }
  ui.captions.append(span);
  while (ui.captions.textContent.length > 240 && ui.captions.firstChild) ui.captions.firstChild.remove();
}

async function readStats() {
  const pc = duplex.pc;
  if (!pc) return;
  const stats = await pc.getStats();
  stats.forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && s.currentRoundTripTime != null) {
      duplex.stats.rttMs = s.currentRoundTripTime * 1000;
      ui.latRtt.textContent = `${duplex.stats.rttMs.toFixed(1)} ms`;
    }
    if (s.type === "inbound-rtp" && s.kind === "video") {
      const now = performance.now();
      if (lastVideo) {
        duplex.stats.fps = ((s.framesDecoded - lastVideo.frames) * 1000) / (now - lastVideo.t);
        ui.latFps.textContent = `${duplex.stats.fps.toFixed(1)} fps`;
      }
      lastVideo = { t: now, frames: s.framesDecoded };
      duplex.stats.framesDecoded = s.framesDecoded;
    }
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      duplex.stats.audioSamples = s.totalSamplesReceived;
      duplex.stats.audioEnergy = s.totalAudioEnergy;
    }
  });
}

function dropped(why) {
  stop();
  say(`The call dropped: ${why}. Call again when the connection is back.`);
  setStatus("Call dropped");
}

function hangup() {
  if (duplex.dc?.readyState === "open") duplex.dc.send(JSON.stringify({ type: "bye" }));
  stop();
  setStatus("Ready to call");
}

// Close the call (not the camera): timers, channel, peer connection, remote media.
function stop() {
  clearTimeout(retryTimer);
  retryTimer = null;
  timers.forEach(clearInterval);
  timers = [];
  lastVideo = null;
  lastHeard = 0;
  const pc = duplex.pc;
  duplex.pc = null;
  if (duplex.dc) duplex.dc.onclose = null;
  duplex.dc = null;
  if (pc) pc.close();
  ui.remote.srcObject = null;
  setState("idle");
}

ui.call.addEventListener("click", () => { retriesLeft = BUSY_RETRIES; call(); });
ui.hangup.addEventListener("click", hangup);
ui.say.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = ui.text.value.trim();
  if (!text || duplex.dc?.readyState !== "open") return;
  duplex.dc.send(JSON.stringify({ type: "text", text }));
  addCaption(`You: ${text}`, "you");
  ui.text.value = "";
});
window.addEventListener("pagehide", () => duplex.dc?.readyState === "open" && duplex.dc.send(JSON.stringify({ type: "bye" })));
init();
