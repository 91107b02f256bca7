#!/usr/bin/env node
// A JsSIP user agent in Node for lunasip's integration tests (t/integration/test_webrtc.py):
// it connects to lunasip over WebSocket (ws: or wss:, RFC 7118), registers, calls, answers,
// and prints one JSON line per event on stdout so the test can assert what happened.
//
//   node t/node/jssip_ua.js '{"ws": "wss://127.0.0.1:10443", "uri": "sip:alice@example.test",
//                             "registrar": "sip:127.0.0.1:5080", "register": true,
//                             "answer": true, "call": {"target": "sip:bob@127.0.0.1:5090",
//                             "hangup_after": 1}}'
//
// Config keys: ws (the WebSocket URL), uri (the AoR), registrar (JsSIP's registrar_server),
// register (default true), answer (auto-answer incoming calls, default true), call (one call
// placed once registered, or at once with register false), origin (sent in the WebSocket
// handshake), debug (JsSIP's own log on stderr).
// Commands on stdin, one per line:
//   call TARGET [HANGUP_AFTER_S]   place a call, hang up HANGUP_AFTER_S (default 1) s after it is confirmed
//   disconnect                     close the WebSocket (code 1001, "going away", as a closing
//                                  browser tab) without unregistering, then exit
//   quit                           unregister, stop the UA, exit
// Events on stdout: {"event": NAME, ...} with NAME one of connected, disconnected,
// registered (status, path, contact), registration_failed, unregistered, call_sending,
// call_progress (status), call_accepted (status, record_route), call_confirmed,
// call_ended (originator, cause), call_failed (originator, cause, status), incoming_call
// (ruri, from, via, record_route, route, transport), exiting, error.

'use strict';

const readline = require('readline');
const util = require('util');
const WS = require('ws');

// stdout carries the JSON events only: JsSIP's log (console.info through the debug
// package, bound when JsSIP loads) and any console.log go to stderr.
console.info = console.log = (...args) => process.stderr.write(util.format(...args) + '\n');

// JsSIP is written for browsers: it looks for window.RTCPeerConnection and the global
// WebSocket and RTCSessionDescription. Set them before JsSIP is loaded.
global.window = global;

// The browser's WebSocket, on top of the ws package. The test's WSS certificate is
// self-signed, so the server certificate is not verified (a browser would have been told
// to trust it). Every instance is kept so "disconnect" can close the live one.
const sockets = new Set();
class TestWebSocket extends WS.WebSocket {
  constructor(url, protocols) {
    const opts = { rejectUnauthorized: false };
    if (config.origin) opts.origin = config.origin;
    super(url, protocols, opts);
    sockets.add(this);
    this.addEventListener('close', () => sockets.delete(this));
  }
}
global.WebSocket = TestWebSocket;

// ---------------------------------------------------------------------------------------
// A minimal RTCPeerConnection. It stands in for the browser's media stack only: it hands
// JsSIP a fixed, valid audio SDP as offer or answer, accepts any remote description, and
// says ICE gathering is complete, so no media flows and no getUserMedia is needed. All SIP
// signalling (REGISTER, INVITE, ACK, BYE, their transactions and dialogs) is JsSIP's own.
// It implements exactly what JsSIP 3.x's RTCSession calls: createOffer, createAnswer,
// setLocalDescription, setRemoteDescription, localDescription, remoteDescription,
// signalingState, iceGatheringState, iceConnectionState, getSenders, addTrack, close, and
// the EventTarget methods (JsSIP listens to iceconnectionstatechange, icecandidate and
// icegatheringstatechange; with gathering complete at once it never waits for them).

let sdpVersion = 1;
function fixedSdp() {
  const id = 1000 + Math.floor(Math.random() * 1e6);
  return [
    'v=0',
    `o=- ${id} ${sdpVersion++} IN IP4 127.0.0.1`,
    's=-',
    'c=IN IP4 127.0.0.1',
    't=0 0',
    'm=audio 9 RTP/AVP 0 8 101',
    'a=rtpmap:0 PCMU/8000',
    'a=rtpmap:8 PCMA/8000',
    'a=rtpmap:101 telephone-event/8000',
    'a=fmtp:101 0-15',
    'a=sendrecv',
    '',
  ].join('\r\n');
}

class RTCSessionDescription {
  constructor(init) {
    this.type = init && init.type;
    this.sdp = init && init.sdp;
  }
  toJSON() {
    return { type: this.type, sdp: this.sdp };
  }
}

class RTCPeerConnection extends EventTarget {
  constructor(config) {
    super();
    this.config = config || {};
    this.localDescription = null;
    this.remoteDescription = null;
    this.signalingState = 'stable';
    this.iceGatheringState = 'complete';
    this.iceConnectionState = 'new';
    this.connectionState = 'new';
    this._closed = false;
  }
  createOffer() {
    return Promise.resolve(new RTCSessionDescription({ type: 'offer', sdp: fixedSdp() }));
  }
  createAnswer() {
    if (!this.remoteDescription || this.remoteDescription.type !== 'offer') {
      return Promise.reject(new Error('createAnswer without a remote offer'));
    }
    return Promise.resolve(new RTCSessionDescription({ type: 'answer', sdp: fixedSdp() }));
  }
  setLocalDescription(desc) {
    this.localDescription = new RTCSessionDescription(desc);
    this.signalingState = desc.type === 'offer' ? 'have-local-offer' : 'stable';
    return Promise.resolve();
  }
  setRemoteDescription(desc) {
    if (!desc || typeof desc.sdp !== 'string' || !/^v=0/m.test(desc.sdp)) {
      return Promise.reject(new Error('not an SDP'));
    }
    this.remoteDescription = new RTCSessionDescription(desc);
    this.signalingState = desc.type === 'offer' ? 'have-remote-offer' : 'stable';
    if (desc.type === 'answer') this._setIce('connected');
    return Promise.resolve();
  }
  _setIce(state) {
    if (this._closed || this.iceConnectionState === state) return;
    this.iceConnectionState = state;
    this.connectionState = state;
    this.dispatchEvent(new Event('iceconnectionstatechange'));
  }
  getSenders() {
    return [];
  }
  getReceivers() {
    return [];
  }
  addTrack() {
    throw new Error('the test peer connection carries no media');
  }
  close() {
    this._closed = true;
    this.signalingState = 'closed';
    this.iceConnectionState = 'closed';
  }
}
global.RTCPeerConnection = RTCPeerConnection;
global.RTCSessionDescription = RTCSessionDescription;

// ---------------------------------------------------------------------------------------

function emit(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event, t: Date.now() / 1000 }, fields || {})) + '\n');
}

let config;
try {
  config = JSON.parse(process.argv[2] || '{}');
} catch (e) {
  process.stderr.write(`jssip_ua: the first argument is not JSON: ${e.message}\n`);
  process.exit(2);
}
if (!config.ws || !config.uri) {
  process.stderr.write('jssip_ua: config needs "ws" and "uri"\n');
  process.exit(2);
}

const JsSIP = require('jssip');
if (config.debug) JsSIP.debug.enable('JsSIP:*');
else JsSIP.debug.disable();

const NO_MEDIA = { audio: false, video: false };

const ua = new JsSIP.UA({
  sockets: [new JsSIP.WebSocketInterface(config.ws)],
  uri: config.uri,
  registrar_server: config.registrar || undefined,
  register: config.register !== false,
  register_expires: 600,
  session_timers: false,
  // one attempt: a test decides what a lost connection means, JsSIP must not hide it
  connection_recovery_min_interval: 30,
  connection_recovery_max_interval: 30,
  user_agent: 'lunasip-test JsSIP/' + JsSIP.version,
});

let exiting = false;
function exit(code, why) {
  if (exiting) return;
  exiting = true;
  emit('exiting', { why });
  // let stdout drain before the process goes
  process.stdout.write('', () => process.exit(code));
}

function headers(msg, name) {
  try {
    return msg.getHeaders(name);
  } catch (e) {
    return [];
  }
}

let callSeq = 0;
let placed = false; // the call of config.call
function watch(session, id) {
  session.on('sending', () => emit('call_sending', { id }));
  session.on('progress', (e) => emit('call_progress', { id, originator: e.originator,
    status: e.response ? e.response.status_code : null }));
  session.on('accepted', (e) => emit('call_accepted', { id, originator: e.originator,
    status: e.response ? e.response.status_code : null,
    record_route: e.response ? headers(e.response, 'Record-Route') : [] }));
  session.on('confirmed', (e) => {
    emit('call_confirmed', { id, originator: e.originator });
    if (session._lsitHangup !== undefined) {
      setTimeout(() => {
        if (!session.isEnded()) session.terminate();
      }, session._lsitHangup * 1000);
    }
  });
  session.on('ended', (e) => emit('call_ended', { id, originator: e.originator, cause: e.cause }));
  session.on('failed', (e) => emit('call_failed', { id, originator: e.originator, cause: e.cause,
    status: e.message && e.message.status_code ? e.message.status_code : null }));
}

function call(target, hangupAfter) {
  const id = 'out' + ++callSeq;
  try {
    const session = ua.call(target, { mediaConstraints: NO_MEDIA, pcConfig: { iceServers: [] } });
    session._lsitHangup = hangupAfter === undefined ? 1 : hangupAfter;
    watch(session, id);
  } catch (e) {
    emit('error', { what: 'call', message: String(e && e.message) });
  }
}

ua.on('connected', () => emit('connected', { url: config.ws }));
ua.on('disconnected', (e) => emit('disconnected', { error: !!e.error, code: e.code, reason: e.reason }));
ua.on('registered', (e) => {
  const r = e.response;
  emit('registered', { status: r.status_code, path: headers(r, 'Path'), contact: headers(r, 'Contact') });
  if (config.call && !placed) {
    placed = true;
    call(config.call.target, config.call.hangup_after);
  }
});
ua.on('unregistered', (e) => emit('unregistered', { status: e.response ? e.response.status_code : null }));
ua.on('registrationFailed', (e) => emit('registration_failed', { cause: e.cause,
  status: e.response ? e.response.status_code : null }));
ua.on('newRTCSession', (e) => {
  if (e.originator !== 'remote') return;
  const id = 'in' + ++callSeq;
  const req = e.request;
  emit('incoming_call', { id, ruri: String(req.ruri), from: String(req.from), call_id: req.call_id,
    via: headers(req, 'Via'), record_route: headers(req, 'Record-Route'), route: headers(req, 'Route') });
  watch(e.session, id);
  if (config.answer !== false) {
    e.session.answer({ mediaConstraints: NO_MEDIA, pcConfig: { iceServers: [] } });
  }
});

ua.start();
if (config.call && config.register === false) {
  ua.once('connected', () => {
    placed = true;
    call(config.call.target, config.call.hangup_after);
  });
}

let disconnecting = false;
function disconnect() {
  // no un-REGISTER: the registration stays at the registrar, the flow is gone
  disconnecting = true;
  const live = [...sockets];
  if (live.length === 0) return exit(0, 'disconnect (no connection)');
  let left = live.length;
  for (const s of live) {
    const done = () => {
      if (--left === 0) exit(0, 'disconnect');
    };
    const timer = setTimeout(() => {
      s.terminate();
    }, 2000);
    s.addEventListener('close', () => {
      clearTimeout(timer);
      emit('ws_closed', { url: config.ws });
      done();
    });
    s.close(1001, 'going away');
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const w = line.trim().split(/\s+/);
  if (w[0] === 'call' && w[1]) call(w[1], w[2] !== undefined ? Number(w[2]) : undefined);
  else if (w[0] === 'disconnect') disconnect();
  else if (w[0] === 'quit') {
    ua.stop();
    setTimeout(() => exit(0, 'quit'), 1500);
  } else if (w[0]) emit('error', { what: 'command', message: `unknown command ${line}` });
});
// the test went away (or closed stdin to end us): exit, unless a disconnect is under way
rl.on('close', () => {
  if (!disconnecting) exit(0, 'stdin closed');
});
process.on('SIGTERM', () => exit(0, 'SIGTERM'));
