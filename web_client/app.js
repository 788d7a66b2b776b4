// Browser client for the lip-sync streaming server.
// Plain JS, no build step: fills the pickers from the server, sends camera + microphone over
// WebRTC, plays the lip-synced stream it gets back, and shows live statistics from both the
// browser (pc.getStats) and the server (/ws/stats).
'use strict';

const $ = (id) => document.getElementById(id);
const DASH = '–';

// Shared state; exposed for tests and for poking at in the console.
const state = {
  pc: null,
  sessionId: null,
  auto: null, // how --backend auto chose the default backend ({backend, reason}), if it did
  ws: null,
  localStream: null,
  lastServerStats: null,
  lastBrowserStats: null,
  statsTimer: null,
  prevInbound: null, // previous inbound-rtp video report, for framesDecoded deltas
  running: false,    // true between a successful start and stop
  config: {
    fps_choices: [15, 20, 25, 30], default_fps: 25, ice_servers: [], token_required: false,
    mouth_gain: { default: 1.75, min: 0.5, max: 3 },
    emotion: { default: 'neutral', choices: ['neutral'] },
  },
};
window.lipsync = state;

// ---------------------------------------------------------------------------- helpers

function setStatus(text, kind) {
  const el = $('status');
  el.textContent = text;
  el.dataset.state = kind || text;
}

function showError(message) {
  $('error').textContent = message || '';
}

function logEvent(message) {
  const li = document.createElement('li');
  const time = new Date().toLocaleTimeString();
  li.textContent = `${time}  ${message}`;
  const list = $('events');
  list.prepend(li);
  while (list.children.length > 50) list.lastChild.remove();
}

function fmt(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return DASH;
  return typeof value === 'number' ? value.toFixed(digits) : String(value);
}

function setText(id, text) {
  $(id).textContent = text;
}

function authHeaders() {
  const token = $('token').value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function getJSON(path) {
  const res = await fetch(path, { headers: authHeaders() });
  if (!res.ok) {
    let detail = '';
    try { detail = (await res.json()).error || ''; } catch (_) { /* not JSON */ }
    throw Object.assign(new Error(`${path}: HTTP ${res.status}${detail ? ` (${detail})` : ''}`), { status: res.status });
  }
  return res.json();
}

// Adds the access token to a URL the browser fetches by itself (images, WebSockets).
function withToken(url) {
  const token = $('token').value.trim();
  if (!token) return url;
  return `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
}

// Reads {error, valid} from a failed response; falls back to the status line.
async function serverError(res) {
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  let msg = (body && body.error) || `Server answered HTTP ${res.status} ${res.statusText}`;
  if (body && Array.isArray(body.valid) && body.valid.length) {
    msg += ` (valid values: ${body.valid.join(', ')})`;
  }
  if (res.status === 503 && res.headers.get('Retry-After')) {
    msg += ` (retry after ${res.headers.get('Retry-After')} s)`;
  }
  if (res.status === 401) {
    $('token-field').hidden = false;
    msg += ' Type the access token you were given into the Access token field.';
  }
  return `The server refused the session: ${msg}`;
}

function mediaErrorMessage(err) {
  switch (err && err.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Camera/microphone access was denied. Allow access for this site ' +
        '(the camera icon in the address bar or the site settings) and press Start again.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No camera or microphone was found. Connect a camera and a microphone ' +
        '(and check they are enabled in your system settings), then press Start again.';
    case 'NotReadableError':
      return 'The camera or microphone is in use by another application or could not be ' +
        'started. Close other apps using it and press Start again.';
    default:
      return `Could not open the camera/microphone: ${err && err.message ? err.message : err}`;
  }
}

// ---------------------------------------------------------------------------- pickers

function fillSelect(select, items, selected) {
  select.replaceChildren();
  for (const item of items) {
    const opt = document.createElement('option');
    opt.value = item.value;
    opt.textContent = item.label;
    if (item.disabled) opt.disabled = true;
    if (item.title) opt.title = item.title;
    select.append(opt);
  }
  if (selected !== undefined && selected !== null) select.value = String(selected);
}

function updateBackendInfo() {
  const opt = $('backend').selectedOptions[0];
  let text = opt ? opt.title || '' : '';
  // with --backend auto, say why the server chose its default
  if (state.auto && opt && opt.value === state.auto.backend) text = `Chosen by auto: ${state.auto.reason}. ${text}`;
  $('backend-info').textContent = text;
}

function updateAvatarThumb() {
  const opt = $('avatar').selectedOptions[0];
  const img = $('avatar-thumb');
  const url = opt && opt.dataset.url;
  img.hidden = !url;
  if (url) img.src = withToken(url); else img.removeAttribute('src');
}

async function loadChoices() {
  let config, backends, avatars;
  try {
    [config, backends, avatars] = await Promise.all([
      getJSON('/config'), getJSON('/backends'), getJSON('/avatars'),
    ]);
  } catch (err) {
    if (err.status === 401) { // the server wants the access token: ask for it, then load again
      $('token-field').hidden = false;
      $('start').disabled = true;
      showError('This server needs an access token. Type it into the Access token field ' +
        '(press Enter) to load the avatars and backends.');
      $('token').focus();
      return;
    }
    throw err;
  }
  showError('');
  $('start').disabled = false;
  if (config) Object.assign(state.config, config);
  $('token-field').hidden = !state.config.token_required;
  $('upload-field').hidden = false;

  // Backends: unavailable ones stay visible but disabled, with the reason as tooltip.
  const list = backends.backends || [];
  fillSelect($('backend'), list.map((b) => {
    const fps = b.typical_fps ? `, ~${b.typical_fps} fps` : '';
    return {
      value: b.name,
      label: b.available ? b.name : `${b.name} (unavailable)`,
      disabled: !b.available,
      title: b.available ? `${b.description || ''}${fps}`.trim() : `Unavailable: ${b.reason || 'unknown reason'}`,
    };
  }));
  state.auto = backends.auto || null;
  const usable = list.filter((b) => b.available).map((b) => b.name);
  $('backend').value = usable.includes(backends.default) ? backends.default : (usable[0] || '');
  updateBackendInfo();

  const alist = avatars.avatars || [];
  fillSelect($('avatar'), alist.map((a) => ({
    value: a.name,
    label: a.kind === 'camera' ? `${a.name} (your camera)` : a.name,
  })), avatars.default);
  // Keep the thumbnail URL on each option.
  alist.forEach((a, i) => { if (a.url) $('avatar').options[i].dataset.url = a.url; });
  updateAvatarThumb();

  fillSelect($('fps'), state.config.fps_choices.map((f) => ({ value: f, label: `${f}` })),
    state.config.default_fps);

  const gain = state.config.mouth_gain;
  Object.assign($('mouth-gain'), { min: gain.min, max: gain.max, value: gain.default });
  const emotion = state.config.emotion || { default: 'neutral', choices: ['neutral'] };
  fillSelect($('emotion'), emotion.choices.map((e) => ({ value: e, label: e })), emotion.default);
  const motion = state.config.motion || { choices: ['still', 'natural', 'lively'] };
  fillSelect($('motion'), [{ value: '', label: 'default' }, ...motion.choices.map((m) => ({ value: m, label: m }))], '');
}

// The emotion picked and its intensity, as the options and a running stream's change name them.
function emotionOptions() {
  const chosen = { emotion: $('emotion').value, emotion_intensity: Number($('emotion-intensity').value) };
  if ($('motion').value) chosen.motion = $('motion').value; // unset: the avatar's default
  return chosen;
}

// A change of emotion while a session runs goes over the stats WebSocket; the server answers
// with the expression in force (or an error with the valid values).
function sendEmotion() {
  if (!state.running || !state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  state.ws.send(JSON.stringify({ type: 'expression', ...emotionOptions() }));
}
$('emotion').addEventListener('change', sendEmotion);
$('emotion-intensity').addEventListener('change', sendEmotion);
$('motion').addEventListener('change', sendEmotion);

// The mouth gain typed in; the server refuses (with the range) one out of range.
function mouthGain() {
  return Number($('mouth-gain').value || state.config.mouth_gain.default);
}

// ---------------------------------------------------------------------------- session

function waitForIceGathering(pc) {
  // aiortc does no trickle ICE: the offer must carry every candidate.
  return new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') resolve();
    });
  });
}

function setRunningUi(running) {
  $('start').disabled = running;
  $('stop').disabled = !running;
  for (const id of ['avatar', 'backend', 'fps', 'mouth-gain', 'token']) $(id).disabled = running;
}

function resetStats() {
  state.lastServerStats = null;
  state.lastBrowserStats = null;
  for (const el of $('stats').querySelectorAll('[id^="stat-"]')) el.textContent = DASH;
}

async function start() {
  showError('');
  resetStats();
  setRunningUi(true);
  setStatus('connecting');
  state.running = true;

  try {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw Object.assign(new Error('Camera access needs a secure page (https:// or localhost).'),
        { name: 'InsecureContext' });
    }
    try {
      state.localStream = await navigator.mediaDevices.getUserMedia({
        video: { width: 640, height: 480 }, audio: true,
      });
    } catch (err) {
      throw Object.assign(new Error(mediaErrorMessage(err)), { userMessage: true });
    }
    $('local').srcObject = state.localStream;

    const pc = new RTCPeerConnection({ iceServers: state.config.ice_servers || [] });
    state.pc = pc;
    const remote = new MediaStream();
    $('output').srcObject = remote;
    pc.addEventListener('track', (ev) => {
      applyPlayout(ev.receiver, $('playout').value);
      remote.addTrack(ev.track);
      $('output').play().catch(() => { /* autoplay blocked: the user can press play */ });
    });
    pc.addEventListener('connectionstatechange', onConnectionState);
    for (const track of state.localStream.getTracks()) {
      pc.addTransceiver(track, { direction: 'sendrecv' });
    }

    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    if (state.pc !== pc) return; // stopped meanwhile

    const res = await fetch('/offer', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...authHeaders() },
      body: JSON.stringify({
        sdp: pc.localDescription.sdp,
        type: 'offer',
        options: {
          backend: $('backend').value,
          avatar: $('avatar').value,
          fps: Number($('fps').value),
          mouth_gain: mouthGain(),
          framing: $('framing').value,
          ...emotionOptions(),
        },
      }),
    });
    if (!res.ok) throw Object.assign(new Error(await serverError(res)), { userMessage: true });
    const answer = await res.json();
    if (state.pc !== pc) { // stopped while the offer was in flight: release the server session
      fetch(`/sessions/${encodeURIComponent(answer.session_id)}`, { method: 'DELETE', headers: authHeaders() }).catch(() => {});
      return;
    }
    state.sessionId = answer.session_id;
    const opts = answer.options || {};
    logEvent(`session ${answer.session_id} started` +
      (opts.backend ? ` (backend ${opts.backend}, avatar ${opts.avatar}, ${opts.fps} fps, mouth gain ${opts.mouth_gain})` : ''));
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });

    openStatsSocket(answer.session_id);
    state.statsTimer = setInterval(pollBrowserStats, 1000);
  } catch (err) {
    console.error(err);
    const msg = err.userMessage ? err.message : `Could not start: ${err.message || err}`;
    showError(msg);
    await stop({ keepError: true });
    setStatus(`failed: ${msg.split('. ')[0]}`, 'failed'); // first sentence; details in #error
  }
}

// 'lowest': no delay added to what the jitter buffers need (jitterBufferTarget 0; Chromium's older
// playoutDelayHint 0 also makes it render video frames as they are decoded), set on the audio and
// the video receiver alike so that lip sync holds; 'smooth': the browser's adaptive default.
function applyPlayout(receiver, playout) {
  if (playout !== 'lowest') return;
  if ('jitterBufferTarget' in receiver) receiver.jitterBufferTarget = 0;
  if ('playoutDelayHint' in receiver) receiver.playoutDelayHint = 0;
}

function onConnectionState() {
  const pc = state.pc;
  if (!pc || this !== pc) return;
  const s = pc.connectionState;
  if (s === 'connected') {
    setStatus('connected');
  } else if (s === 'failed') {
    const msg = 'The media connection failed. Check that a firewall is not blocking UDP, ' +
      'or configure a TURN server (ice_servers) if the server is behind NAT.';
    showError(msg);
    setStatus('failed: connection failed', 'failed');
    stop({ keepError: true, keepStatus: true });
  } else if (s === 'disconnected') {
    setStatus('connecting', 'connecting');
    logEvent('connection interrupted, trying to recover');
  }
}

async function stop({ keepError = false, keepStatus = false } = {}) {
  const sessionId = state.sessionId;
  state.running = false;
  clearInterval(state.statsTimer);
  state.statsTimer = null;
  state.prevInbound = null;
  if (state.ws) {
    const ws = state.ws;
    state.ws = null; // mark as an intentional close before closing
    ws.close();
  }
  if (state.pc) {
    state.pc.close();
    state.pc = null;
  }
  if (state.localStream) {
    state.localStream.getTracks().forEach((t) => t.stop());
    state.localStream = null;
  }
  $('local').srcObject = null;
  $('output').srcObject = null;
  state.sessionId = null;
  setRunningUi(false);
  if (!keepError) showError('');
  if (!keepStatus) setStatus('idle');
  if (sessionId) {
    logEvent(`session ${sessionId} stopped`);
    fetch(`/sessions/${encodeURIComponent(sessionId)}`, { method: 'DELETE', headers: authHeaders() })
      .catch(() => { /* the server may already have dropped it */ });
  }
}

// ---------------------------------------------------------------------------- server stats

function openStatsSocket(sessionId) {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const url = withToken(`${proto}//${location.host}/ws/stats?session=${encodeURIComponent(sessionId)}`);
  const ws = new WebSocket(url);
  state.ws = ws;
  let failed = false;
  ws.addEventListener('message', (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (_) { return; }
    if (msg.type === 'stats') {
      state.lastServerStats = msg;
      renderServerStats(msg);
    } else if (msg.type === 'event') {
      logEvent(msg.message);
    } else if (msg.type === 'expression') {
      logEvent(`emotion ${msg.emotion} (${msg.emotion_intensity})`);
    } else if (msg.type === 'error') {
      showError(msg.error);
    } else if (msg.type === 'closed') {
      logEvent(`server closed the session${msg.reason ? `: ${msg.reason}` : ''}`);
      if (state.running && msg.reason && msg.reason !== 'closed by the client') {
        showError(`The server ended the session: ${msg.reason}`);
      }
    }
  });
  ws.addEventListener('error', () => {
    if (state.ws !== ws) return;
    failed = true;
    showError('Live server statistics are unavailable: the WebSocket connection to ' +
      '/ws/stats failed. The video may still work; check proxies that block WebSockets.');
  });
  ws.addEventListener('close', (ev) => {
    if (state.ws !== ws) return; // closed by stop()
    state.ws = null;
    if (!failed && ev.code !== 1000) logEvent(`stats connection closed (code ${ev.code})`);
  });
}

function renderServerStats(s) {
  const frames = s.frames || {};
  const lat = s.latency_ms || {};
  setText('stat-fps-out', fmt(s.fps_out, 1));
  setText('stat-mouth-gain', fmt(s.mouth_gain, 2));
  setText('stat-emotion', s.emotion ? `${s.emotion} (${fmt(s.emotion_intensity, 2)})` : DASH);
  const fallbacks = s.fallbacks || [];
  setText('stat-backend', fallbacks.length ? `${s.backend} (fallback: ${fallbacks[fallbacks.length - 1].from} failed)` : fmt(s.backend));
  $('stat-backend').dataset.fallback = fallbacks.length ? 'yes' : 'no';
  setText('stat-generated', fmt(frames.generated));
  setText('stat-interpolated', fmt(frames.interpolated));
  setText('stat-repeated', fmt(frames.repeated));
  setText('stat-dropped', fmt(frames.dropped));
  setText('stat-unsent', fmt(frames.unsent));
  setText('stat-latency', `${fmt(lat.p50)} / ${fmt(lat.p95)}`);
  setText('stat-delay', fmt(s.delay_ms));
  setText('stat-face-lost', fmt((s.backend_stats || {}).face_lost));
}

// ---------------------------------------------------------------------------- browser stats

async function pollBrowserStats() {
  const pc = state.pc;
  if (!pc) return;
  let report;
  try { report = await pc.getStats(); } catch (_) { return; }
  let inbound = null;
  let pair = null;
  let selectedPairId = null;
  report.forEach((r) => {
    if (r.type === 'inbound-rtp' && (r.kind === 'video' || r.mediaType === 'video')) inbound = r;
    if (r.type === 'transport' && r.selectedCandidatePairId) selectedPairId = r.selectedCandidatePairId;
  });
  report.forEach((r) => {
    if (r.type !== 'candidate-pair') return;
    if (selectedPairId ? r.id === selectedPairId : (r.nominated && r.state === 'succeeded')) pair = r;
  });

  const out = { fps: null, jitterBufferMs: null, freezes: null, rttMs: null, framesDropped: null,
    framesDecoded: null };
  if (inbound) {
    out.framesDecoded = inbound.framesDecoded ?? null;
    const prev = state.prevInbound;
    if (typeof inbound.framesPerSecond === 'number') {
      out.fps = inbound.framesPerSecond;
    } else if (prev && inbound.framesDecoded !== undefined && inbound.timestamp > prev.timestamp) {
      out.fps = (inbound.framesDecoded - prev.framesDecoded) * 1000 / (inbound.timestamp - prev.timestamp);
    }
    if (inbound.jitterBufferEmittedCount > 0) {
      out.jitterBufferMs = 1000 * inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount;
    }
    out.freezes = inbound.freezeCount ?? null;
    out.framesDropped = inbound.framesDropped ?? null;
    state.prevInbound = { timestamp: inbound.timestamp, framesDecoded: inbound.framesDecoded };
  }
  if (pair && typeof pair.currentRoundTripTime === 'number') out.rttMs = pair.currentRoundTripTime * 1000;

  state.lastBrowserStats = out;
  setText('stat-fps-received', fmt(out.fps, 1));
  setText('stat-jitter-buffer', fmt(out.jitterBufferMs));
  setText('stat-freezes', fmt(out.freezes));
  setText('stat-rtt', fmt(out.rttMs));
  setText('stat-frames-dropped', fmt(out.framesDropped));
}

// ---------------------------------------------------------------------------- upload

// A video enrols the person (the server trains their head): its progress is polled and shown
// until it is done, failed or cancelled; then the new avatar is picked.
async function enrolVideo(file, stem) {
  const res = await fetch(`/avatars?name=${encodeURIComponent(stem)}`, {
    method: 'POST', headers: { 'Content-Type': file.type || 'video/mp4', ...authHeaders() }, body: file,
  });
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) {
    showError(`The video was not accepted: ${(body && body.error) || `HTTP ${res.status}`}`);
    return;
  }
  logEvent(`enrolling ${stem}${body.tiny ? ' at test scale (no GPU here)' : ''}`);
  $('enrol-progress').hidden = false;
  state.enrolUrl = body.url;
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const poll = await fetch(body.url, { headers: authHeaders() });
    const job = await poll.json();
    const p = job.progress || {};
    $('enrol-bar').value = p.fraction || 0;
    setText('enrol-text', [p.stage, p.iteration !== undefined ? `it ${p.iteration}/${p.total}` : '',
      p.heldout_psnr ? `held-out PSNR ${fmt(p.heldout_psnr, 1)} dB` : '',
      p.seconds_left !== undefined && p.seconds_left !== null ? `${fmt(p.seconds_left)} s left` : ''].filter(Boolean).join(' · '));
    if (job.state === 'running') continue;
    $('enrol-progress').hidden = true;
    state.enrolUrl = null;
    if (job.state === 'done') {
      logEvent(`enrolled ${job.name}`);
      await loadChoices();
      $('avatar').value = job.name;
      updateAvatarThumb();
    } else {
      showError(`The enrolment ${job.state}: ${job.error}`);
    }
    return;
  }
}

$('enrol-cancel').addEventListener('click', () => {
  if (state.enrolUrl) fetch(state.enrolUrl, { method: 'DELETE', headers: authHeaders() }).catch(() => {});
});

async function uploadAvatar() {
  const file = $('upload').files[0];
  if (!file) return;
  showError('');
  if ((file.type || '').startsWith('video/')) {
    const stem = file.name.replace(/\.[^.]*$/, '').replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 32) || 'upload';
    try { await enrolVideo(file, stem); } catch (err) { showError(`The enrolment failed: ${err.message || err}`); }
    $('upload').value = '';
    return;
  }
  const stem = file.name.replace(/\.[^.]*$/, '').replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 32) || 'upload';
  try {
    const res = await fetch(`/avatars?name=${encodeURIComponent(stem)}`, {
      method: 'POST', headers: { 'Content-Type': file.type || 'application/octet-stream', ...authHeaders() }, body: file,
    });
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    if (!res.ok) {
      showError(`The photo was not accepted: ${(body && body.error) || `HTTP ${res.status}`}`);
      return;
    }
    logEvent(`uploaded avatar ${body.avatar.name} (${body.width}x${body.height})`);
    await loadChoices();
    $('avatar').value = body.avatar.name;
    updateAvatarThumb();
  } catch (err) {
    showError(`The upload failed: ${err.message || err}`);
  } finally {
    $('upload').value = '';
  }
}

// ---------------------------------------------------------------------------- wiring

$('controls').addEventListener('submit', (ev) => ev.preventDefault()); // Enter must not reload
$('start').addEventListener('click', start);
$('stop').addEventListener('click', () => stop());
$('backend').addEventListener('change', updateBackendInfo);
$('avatar').addEventListener('change', updateAvatarThumb);
$('upload').addEventListener('change', uploadAvatar);
$('token').addEventListener('change', () => { if (!state.running) loadChoices().catch((err) => showError(err.message)); });
$('avatar-thumb').addEventListener('error', (ev) => { ev.target.hidden = true; });
window.addEventListener('pagehide', () => { if (state.running) stop(); });

setStatus('idle');
loadChoices().catch((err) => {
  console.error(err);
  showError(`Could not load the server's options (${err.message}). Is the server running? Reload to retry.`);
  $('start').disabled = true;
});
