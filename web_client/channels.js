// Channels on the page: create one from the current choices, list them (producer, viewers,
// speaking), start and stop recording, publish one to an SFU over WHIP (egress), delete; their
// events go to the Events list.
'use strict';

const channelSockets = new Map(); // channel name -> WebSocket of its events
const egressDrafts = new Map(); // channel name -> {url, token} typed but not sent (rows are redrawn)

async function channelCall(method, path, body) {
  const headers = { ...authHeaders(), ...(body ? { 'Content-Type': 'application/json' } : {}) };
  const res = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  if (!res.ok) throw new Error((await serverError(res)).replace('The server refused the session: ', ''));
  return res.json();
}

function channelRow(channel) {
  const name = encodeURIComponent(channel.name);
  const whip = `${location.origin}/whip/${name}`;
  const row = document.createElement('tr');
  row.innerHTML = `<td>${channel.name}</td><td>${channel.producer ? 'connected' : '–'}</td>
    <td>${channel.viewers}</td><td>${channel.speaking ? 'yes' : 'no'}</td>
    <td><code>${whip}</code></td><td><a href="${withToken(`/view/${name}`)}" target="_blank">/view/${channel.name}</a></td>
    <td><button type="button" data-act="record">${channel.recording ? 'Stop recording' : 'Record'}</button></td>
    <td class="egress"></td>
    <td><button type="button" data-act="delete">Delete</button></td>`;
  row.querySelector('.egress').append(...egressCell(channel));
  row.querySelector('[data-act=record]').onclick = () => channelCall(
    channel.recording ? 'DELETE' : 'POST', `/channels/${name}/recording`,
  ).then((r) => { logEvent(`channel ${channel.name}: ${r.recording ? 'recording to' : 'recorded'} ${r.file}`); refreshChannels(); })
    .catch((err) => showError(err.message));
  row.querySelector('[data-act=delete]').onclick = () => channelCall('DELETE', `/channels/${name}`)
    .then(refreshChannels).catch((err) => showError(err.message));
  return row;
}

// Publishing to an SFU: a WHIP URL and bearer token, Publish; then its state and Stop.
function egressCell(channel) {
  const name = encodeURIComponent(channel.name);
  const button = document.createElement('button');
  button.type = 'button';
  const egress = channel.egress;
  if (egress) {
    const state = document.createElement('span');
    state.className = `egress-state ${egress.state}`;
    const retry = egress.retry_in_s != null ? `, again in ${egress.retry_in_s} s` : '';
    state.textContent = `${egress.state}${egress.error ? `: ${egress.error}${retry}` : ''}`;
    state.title = egress.url;
    button.textContent = 'Stop';
    button.dataset.act = 'egress-stop';
    button.onclick = () => channelCall('DELETE', `/channels/${name}/egress`)
      .then(() => { logEvent(`channel ${channel.name}: no longer published to ${egress.url}`); refreshChannels(); })
      .catch((err) => showError(err.message));
    return [state, ' ', button];
  }
  const draft = egressDrafts.get(channel.name) || { url: '', token: '' };
  const url = Object.assign(document.createElement('input'), { type: 'url', placeholder: 'WHIP URL of an SFU', value: draft.url });
  const token = Object.assign(document.createElement('input'), { type: 'password', placeholder: 'bearer token', value: draft.token, autocomplete: 'off' });
  url.dataset.act = 'egress-url';
  token.dataset.act = 'egress-token';
  const keep = () => egressDrafts.set(channel.name, { url: url.value.trim(), token: token.value });
  url.oninput = keep;
  token.oninput = keep;
  button.textContent = 'Publish';
  button.dataset.act = 'egress-start';
  button.onclick = () => channelCall('POST', `/channels/${name}/egress`, { url: url.value.trim(), ...(token.value ? { token: token.value } : {}) })
    .then(() => { egressDrafts.delete(channel.name); logEvent(`channel ${channel.name}: publishing to ${url.value.trim()}`); refreshChannels(); })
    .catch((err) => showError(err.message));
  return [url, ' ', token, ' ', button];
}

function listenToChannel(name) {
  if (channelSockets.has(name)) return;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(withToken(`${scheme}://${location.host}/ws/channels/${encodeURIComponent(name)}`));
  socket.onmessage = (event) => {
    const data = JSON.parse(event.data);
    if (data.type === 'speaking') logEvent(`channel ${name}: speaking ${data.speaking ? 'started' : 'stopped'}`);
    if (data.type === 'producer') logEvent(`channel ${name}: producer ${data.connected ? 'connected' : `left (${data.reason})`}`);
    if (data.type === 'egress' && ['live', 'retrying'].includes(data.state)) {
      logEvent(`channel ${name}: SFU ${data.state}${data.error ? ` (${data.error})` : ''}`);
    }
    if (data.type !== 'state') refreshChannels();
  };
  socket.onclose = () => channelSockets.delete(name);
  channelSockets.set(name, socket);
}

async function refreshChannels() {
  if (document.activeElement && document.activeElement.closest('#channels .egress input')) return; // typing there
  let channels;
  try { channels = await getJSON('/channels'); } catch (err) { return; } // e.g. the token is not typed yet
  const body = document.querySelector('#channels tbody');
  body.replaceChildren(...channels.map(channelRow));
  channels.forEach((c) => listenToChannel(c.name));
  for (const [name, socket] of channelSockets) {
    if (!channels.some((c) => c.name === name)) socket.close();
  }
}

$('channel-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const name = $('channel-name').value.trim();
  const options = {
    backend: $('backend').value, avatar: $('avatar').value, fps: Number($('fps').value), mouth_gain: mouthGain(), framing: $('framing').value,
    ...emotionOptions(),
  };
  channelCall('POST', '/channels', { name, options })
    .then(() => { $('channel-name').value = ''; logEvent(`channel ${name} created: send to ${location.origin}/whip/${name}`); refreshChannels(); })
    .catch((err) => showError(err.message));
});
refreshChannels();
setInterval(refreshChannels, 5000);
