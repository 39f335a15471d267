// Vigil's browser client: token handling, HTTP API, and the /signal and /monitor protocols
// exactly as docs/protocol.md describes them (no trickle ICE; re-join and re-offer after a drop).
"use strict";

const Vigil = (() => {
  const TOKEN_KEY = "vigil.token";

  // Links carry the token in the URL fragment (never sent to the server, never logged).
  function token() {
    const m = location.hash.match(/token=([^&]+)/);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function requireToken() {
    const t = token();
    if (!t) location.href = "/";
    return t;
  }

  function logout() {
    sessionStorage.removeItem(TOKEN_KEY);
    location.href = "/";
  }

  async function api(path, options = {}) {
    const headers = { "Content-Type": "application/json" };
    const t = token();
    if (t) headers.Authorization = `Bearer ${t}`;
    const res = await fetch(path, { ...options, headers });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      const err = new Error((body.error && body.error.message) || res.statusText);
      err.code = body.error && body.error.code;
      err.status = res.status;
      throw err;
    }
    return body;
  }

  function socket(namespace, onRefused) {
    const s = io(namespace, { auth: { token: token() }, transports: ["websocket"] });
    s.on("connect_error", (err) => {
      // A refused connection carries {code, message}; a network error does not.
      if (err && err.data && err.data.code && onRefused) onRefused(err.data);
    });
    return s;
  }

  function call(sock, event, data) {
    return new Promise((resolve, reject) => {
      sock.timeout(30000).emit(event, data, (timeoutErr, reply) => {
        if (timeoutErr) return reject(new Error(`${event}: no answer`));
        if (!reply || !reply.ok) {
          const e = new Error((reply && reply.error && reply.error.message) || "refused");
          e.code = reply && reply.error && reply.error.code;
          return reject(e);
        }
        resolve(reply);
      });
    });
  }

  // The server does not trickle ICE: send the offer once every candidate is in it.
  function gathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (pc.iceGatheringState === "complete") {
          pc.removeEventListener("icegatheringstatechange", check);
          resolve();
        }
      };
      pc.addEventListener("icegatheringstatechange", check);
      setTimeout(resolve, 5000); // send what we have rather than wait forever
    });
  }

  // One media session over /signal, re-negotiated on every (re)connect and on peer_failed.
  // role: "viewer" (onTrack receives remote tracks) or "publisher" (stream is sent).
  function media(sock, sessionId, role, { stream, onTrack, onStatus } = {}) {
    let pc = null;
    let stopped = false;
    const status = (s) => onStatus && onStatus(s);

    async function negotiate() {
      if (stopped || !sock.connected) return;
      status("joining");
      const joined = await call(sock, "join", { session_id: sessionId, as: role });
      if (stopped) return;
      if (pc) pc.close();
      pc = new RTCPeerConnection({ iceServers: joined.ice_servers });
      const mine = pc;
      if (role === "publisher") {
        stream.getTracks().forEach((t) => pc.addTrack(t, stream));
      } else {
        pc.addTransceiver("audio", { direction: "recvonly" });
        pc.addTransceiver("video", { direction: "recvonly" });
        pc.ontrack = (ev) => onTrack && onTrack(ev);
      }
      pc.onconnectionstatechange = () => {
        if (mine !== pc) return;
        status(pc.connectionState);
        if (pc.connectionState === "failed") setTimeout(() => negotiate().catch(report), 1000);
      };
      // A newer negotiation (peer_failed and "failed" both start one) replaces `pc`: this one
      // must then stop, and never apply its answer to the newer connection.
      try {
        await mine.setLocalDescription(await mine.createOffer());
        await gathered(mine);
        if (mine !== pc || stopped) return; // superseded, or stopped while gathering
        const answer = await call(sock, "offer", {
          session_id: sessionId, type: "offer", sdp: mine.localDescription.sdp,
        });
        if (mine !== pc) return;
        await mine.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      } catch (err) {
        if (mine !== pc) return; // closed by the newer negotiation
        throw err;
      }
      status("negotiated");
    }

    // Refusals that a retry cannot fix; anything else (a timeout, a network error, an
    // unjoined socket after a reconnect) is retried with a growing delay.
    const FATAL = ["forbidden", "session_ended", "bad_request", "bad_sdp", "token_expired",
      "token_invalid", "invite_revoked", "account_disabled", "already_joined", "unknown_session",
      "payload_too_large"];
    let delayMs = 1000;
    let retryTimer = null;
    function retry() {
      clearTimeout(retryTimer);
      retryTimer = setTimeout(() => negotiate().then(() => { delayMs = 1000; }, report), delayMs);
      delayMs = Math.min(delayMs * 2, 15000);
    }

    function report(err) {
      status(`error: ${err.code || ""} ${err.message}`);
      if (!stopped && !FATAL.includes(err.code)) retry();
    }

    function halt(reason) {
      stopped = true;
      clearTimeout(retryTimer);
      if (pc) pc.close();
      status(reason);
    }

    const handlers = {
      connect: () => negotiate().catch(report),
      peer_failed: (d) => { if (d.session_id === sessionId) negotiate().catch(report); },
      // Another tab or device of the same patient took over: stop, do not take it back.
      replaced: (d) => { if (d.session_id === sessionId) halt("replaced"); },
      session_ended: (d) => { if (d.session_id === sessionId) halt("ended"); },
    };
    for (const [event, fn] of Object.entries(handlers)) sock.on(event, fn);
    if (sock.connected) negotiate().catch(report);
    return {
      // stay = true: close the media but stay joined (still watching, e.g. as a thumbnail).
      stop(stay = false) {
        stopped = true;
        clearTimeout(retryTimer);
        for (const [event, fn] of Object.entries(handlers)) sock.off(event, fn);
        if (pc) pc.close();
        if (sock.connected) sock.emit(stay ? "stop_media" : "leave", { session_id: sessionId });
      },
      get pc() { return pc; },
    };
  }

  // Join a session as a viewer without media (a roster thumbnail): the server counts this
  // connection as watching; joined again after every reconnect.
  function watch(sock, sessionId) {
    const join = () => call(sock, "join", { session_id: sessionId, as: "viewer" }).catch(() => {});
    sock.on("connect", join);
    if (sock.connected) join();
    return {
      stop() {
        sock.off("connect", join);
        if (sock.connected) sock.emit("leave", { session_id: sessionId });
      },
    };
  }

  // A picture from the API (Bearer token, so not a plain <img src>): an object URL, or null.
  async function image(path) {
    const res = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
    if (!res.ok) return null;
    return URL.createObjectURL(await res.blob());
  }

  // Follow a session's events over /monitor from a cursor. onState gets each state snapshot
  // (the follow reply and the server's `state` pushes), onEvent each event once, in order.
  // Live events that arrive while a follow is in flight are held and applied after its
  // replay; a gap, a reconnect or a failed follow re-follows from the cursor.
  const REFUSALS = ["forbidden", "unknown_session", "invite_revoked", "token_expired",
    "token_invalid", "account_disabled", "bad_request"];

  function follow(sock, sessionId, { onState, onEvent, onError }) {
    let cursor = 0;
    let stopped = false;
    let inflight = null;
    let held = [];
    let stateSeq = -1;

    function showState(state) {
      if (state.last_seq < stateSeq) return; // an older snapshot overtaken by a newer one
      stateSeq = state.last_seq;
      onState && onState(state);
    }

    // Returns true when ev shows that something is missing.
    function apply(ev) {
      if (ev.seq <= cursor) return false; // duplicate
      if (ev.seq > cursor + 1) return true; // gap
      cursor = ev.seq;
      onEvent && onEvent(ev);
      return false;
    }

    function accept(ev) {
      if (ev.session_id !== sessionId) return;
      if (inflight) { held.push(ev); return; }
      if (apply(ev)) refollow();
    }

    function refollow() {
      if (stopped) return Promise.resolve();
      if (inflight) return inflight; // coalesce: one follow at a time
      inflight = call(sock, "follow", { session_id: sessionId, after_seq: cursor })
        .then((r) => {
          // Too far behind to replay: the snapshot replaces the history.
          if (r.truncated) cursor = Math.max(cursor, r.state.last_seq);
          showState(r.state);
          let gap = false;
          for (const ev of r.events) gap = apply(ev) || gap;
          const later = held.sort((a, b) => a.seq - b.seq);
          held = [];
          for (const ev of later) gap = apply(ev) || gap;
          return gap;
        })
        .catch((err) => {
          // A refusal (revoked invite, expired sign-in…) will not change by retrying: stop
          // and say why; anything else (a timeout, a network error) is retried.
          if (err && REFUSALS.includes(err.code)) {
            stopped = true;
            if (onError) onError(err);
            return false;
          }
          return true;
        })
        .then((again) => {
          inflight = null;
          if (again && !stopped && sock.connected) setTimeout(refollow, 500);
        });
      return inflight;
    }

    const stateHandler = (s) => { if (s.session_id === sessionId) showState(s); };
    sock.on("event", accept);
    sock.on("state", stateHandler);
    sock.on("connect", refollow);
    if (sock.connected) refollow();
    return {
      refresh: refollow,
      // No more events for this session (a roster tile that left the wall).
      stop() {
        stopped = true;
        sock.off("event", accept);
        sock.off("state", stateHandler);
        sock.off("connect", refollow);
        if (sock.connected) sock.emit("unfollow", { session_id: sessionId });
      },
    };
  }

  const PHASES = {
    lobby: "Lobby", pre_check: "Pre-check", dosing: "Dosing", active: "Active",
    recovery: "Recovery", awaiting_signoff: "Awaiting sign-off", completed: "Completed",
    ended_early: "Ended early",
  };

  // "mm:ss" of protocol time since the dose, from a state snapshot and the time scale.
  function sinceDose(state, receivedAt) {
    if (state.minutes_since_dose == null) return "—";
    let minutes = state.minutes_since_dose;
    if (!["completed", "ended_early"].includes(state.phase)) {
      minutes += ((Date.now() - receivedAt) / 60000) * state.time_scale;
    }
    const total = Math.max(0, Math.floor(minutes * 60));
    return `${String(Math.floor(total / 60)).padStart(2, "0")}:${String(total % 60).padStart(2, "0")}`;
  }

  return { token, requireToken, logout, api, socket, call, media, watch, image, follow, PHASES, sinceDose };
})();
