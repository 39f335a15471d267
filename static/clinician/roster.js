// The roster wall for clinicians and on-call staff: a tile per session (live video, phase and
// clock, last check-in, open flags by priority, open alarms with acknowledge/resolve, media
// health, watchers), sorted by urgency; on-call also gets the clinic's alarm board. Each
// session's events are followed from a cursor; any event refreshes the roster snapshot.
"use strict";

(async () => {
  const $ = (id) => document.getElementById(id);
  Vigil.requireToken();
  $("logout").onclick = Vigil.logout;
  const errorEl = $("error");
  const refused = (d) => { errorEl.textContent = d.message; if (d.code.startsWith("token")) Vigil.logout(); };
  let me;
  try { me = await Vigil.api("/api/me"); } catch (e) { return Vigil.logout(); }
  $("who").textContent = `${me.name} (${me.role})`;
  $("admin-link").hidden = me.role !== "admin";
  const signal = Vigil.socket("/signal", refused);
  const monitor = Vigil.socket("/monitor", refused);
  const tiles = new Map();
  // Above this many sessions, tiles show a thumbnail (refreshed every THUMB_EVERY_MS) and only
  // the focused tile, or one switched to live, receives video: every live tile is a stream
  // the server must send and this browser must decode.
  const LIVE_TILES_MAX = 6;
  const THUMB_EVERY_MS = 3000;
  const ROSTER_EVERY_MS = 10000;
  const clinical = me.role !== "admin"; // admins watch and answer alarms, not the clock

  // -- alarm sound (Web Audio: no file to fetch, works offline) ---------------------------
  let soundOn = true;
  let audio = null;
  $("sound-alarms").onclick = () => {
    soundOn = !soundOn;
    $("sound-alarms").textContent = soundOn ? "Alarm sound on" : "Alarm sound off";
    $("sound-alarms").setAttribute("aria-pressed", String(soundOn));
  };
  function beep(priority) {
    if (!soundOn) return;
    try {
      audio = audio || new AudioContext();
      const pattern = priority === "high" ? [0, 0.25, 0.5] : [0];
      for (const t of pattern) {
        const osc = audio.createOscillator();
        const gain = audio.createGain();
        osc.frequency.value = priority === "high" ? 880 : 660;
        gain.gain.value = 0.15;
        osc.connect(gain).connect(audio.destination);
        osc.start(audio.currentTime + t); osc.stop(audio.currentTime + t + 0.18);
      }
    } catch (e) { /* the page still shows the alarm */ }
  }

  // -- rendering ---------------------------------------------------------------------------
  const age = (seconds) => seconds == null ? "never" : seconds < 90 ? `${Math.round(seconds)} s ago` : `${Math.round(seconds / 60)} min ago`;
  function chip(text, priority) {
    const s = document.createElement("span");
    s.className = `chip ${priority}`; s.textContent = text;
    return s;
  }
  function alarmItem(a, withSession) {
    const li = document.createElement("li");
    li.dataset.alarmId = a.alarm_id;
    li.appendChild(chip(a.priority, a.priority));
    const label = document.createElement("span");
    const name = withSession ? `${(tiles.get(a.session_id) || {}).name || "session"}: ` : "";
    label.textContent = `${name}${a.kind.replace(/_/g, " ")}${a.detail && a.detail.label ? ` (${a.detail.label})` : ""} — ${a.status}${a.paging ? `, paging ${a.paging}` : ""}`;
    li.appendChild(label);
    const countdown = document.createElement("span");
    countdown.className = "countdown muted";
    countdown.dataset.next = a.next_step_at || "";
    li.appendChild(countdown);
    for (const [action, text] of [["ack_alarm", "Acknowledge"], ["resolve_alarm", "Resolve"]]) {
      if (action === "ack_alarm" && a.status !== "triggered") continue;
      const b = document.createElement("button");
      b.textContent = text; b.dataset.alarmAction = action;
      b.className = action === "resolve_alarm" ? "secondary" : "";
      b.onclick = async () => {
        try { await Vigil.call(monitor, action, { alarm_id: a.alarm_id }); refresh(); }
        catch (e) { errorEl.textContent = e.message; }
      };
      li.appendChild(b);
    }
    if (withSession && tiles.has(a.session_id)) {
      const w = document.createElement("button");
      w.textContent = "Watch"; w.className = "secondary"; w.dataset.watch = a.session_id;
      w.setAttribute("aria-label", `Watch ${(tiles.get(a.session_id) || {}).name || "the session"} live`);
      w.onclick = () => jumpTo(a.session_id);
      li.appendChild(w);
    }
    if (withSession && a.detail && (a.detail.address || a.detail.sitter_phone)) {
      const d = document.createElement("div");
      d.className = "detail";
      d.textContent = `Address: ${a.detail.address || "—"} · Sitter: ${a.detail.sitter_name || "—"} ${a.detail.sitter_phone || ""} · Emergency contact: ${a.detail.emergency_contact_name || "—"} ${a.detail.emergency_contact_phone || ""}`;
      li.appendChild(d);
    }
    return li;
  }
  function render(t, entry) {
    t.entry = entry; t.at = Date.now(); t.name = entry.patient.display_name;
    const el = t.el;
    el.querySelector(".phase").textContent = Vigil.PHASES[entry.phase] || entry.phase;
    el.querySelector(".phase").className = `phase ${entry.phase}`;
    el.dataset.phase = entry.phase;
    const top = entry.alarms[0];
    el.classList.toggle("urgent-high", Boolean(top && top.priority === "high"));
    el.classList.toggle("urgent-medium", Boolean(top && top.priority === "medium"));
    el.querySelector(".urgency").textContent = top ? `${entry.alarms.length} alarm${entry.alarms.length > 1 ? "s" : ""}` : "";
    el.querySelector(".checkin").textContent = `Last check-in: ${age(entry.last_checkin_age_seconds)}${entry.checkins_waiting.length ? ` · ${entry.checkins_waiting.length} waiting` : ""}`;
    const h = entry.media_health;
    el.querySelector(".media").textContent = h && h.video_frames ? `${h.video_fps} fps · ${Math.round(h.bitrate_kbps)} kbps` : "";
    el.querySelector(".watchers").textContent = `${entry.watchers} watching`;
    const flags = el.querySelector(".flags");
    flags.replaceChildren(...entry.flags.map((f) => chip(f.code.replace(/_/g, " "), f.priority)));
    el.querySelector(".open-flags").replaceChildren(...(clinical ? entry.flags : []).map((f) => {
      const b = document.createElement("button");
      b.className = "secondary"; b.textContent = "Clear";
      b.setAttribute("aria-label", `Clear the flag ${f.code.replace(/_/g, " ")}`);
      b.onclick = async () => {
        const note = prompt(`Clear "${f.code.replace(/_/g, " ")}"? A note for the record (optional):`);
        if (note === null) return;
        try {
          await Vigil.call(monitor, "clear_flag", { session_id: entry.session_id, flag_id: f.flag_id, ...(note ? { note } : {}) });
          scheduleRefresh();
        } catch (e) { errorEl.textContent = e.message; }
      };
      const span = document.createElement("span");
      span.className = "flag";
      span.append(chip(f.code.replace(/_/g, " "), f.priority), b);
      return span;
    }));
    el.querySelector(".alarms").replaceChildren(...entry.alarms.map((a) => alarmItem(a, false)));
    const acts = { admit: "lobby", start_dosing: "pre_check", sign_off: "awaiting_signoff" };
    el.querySelectorAll("[data-action]").forEach((b) => {
      const a = b.dataset.action;
      if (acts[a]) b.disabled = entry.phase !== acts[a];
      if (a === "end") b.disabled = ["completed", "ended_early"].includes(entry.phase);
      if (!clinical && !["sound", "live"].includes(a)) b.hidden = true;
    });
    el.querySelectorAll(".clinical").forEach((f) => { f.hidden = !clinical; });
  }

  // -- live video or thumbnail ----------------------------------------------------------------
  const many = () => tiles.size > LIVE_TILES_MAX;
  function applyMode(t) {
    const live = !many() || t.el.classList.contains("focus") || t.pinned;
    const liveButton = t.el.querySelector("[data-action=live]");
    liveButton.hidden = !many() || t.el.classList.contains("focus");
    liveButton.textContent = t.pinned ? "Thumbnail" : "Live video";
    liveButton.setAttribute("aria-pressed", String(Boolean(t.pinned)));
    t.el.classList.toggle("thumb-mode", !live);
    if (live && !t.media) {
      t.media = Vigil.media(signal, t.entry.session_id, "viewer", {
        onTrack: (ev) => { t.stream.addTrack(ev.track); t.video.play().catch(() => {}); },
        onStatus: (st) => { t.el.dataset.media = st; },
      });
    } else if (!live && t.media) {
      t.media.stop(true); // still joined: a thumbnail on screen is still watching
      t.media = null;
      t.stream.getTracks().forEach((track) => t.stream.removeTrack(track));
      t.el.dataset.media = "thumbnail";
    }
    if (!live && Date.now() - (t.thumbAt || 0) > 1000) refreshThumb(t);
    $("roster").classList.toggle("many", many());
  }
  async function refreshThumb(t) {
    t.thumbAt = Date.now();
    if (!t.entry.publisher_online) return; // no picture to fetch; the tile says "offline"
    try {
      const url = await Vigil.image(`/api/sessions/${t.entry.session_id}/thumbnail`);
      if (!url) return;
      const img = t.el.querySelector(".thumb");
      if (img.src) URL.revokeObjectURL(img.src);
      img.src = url; img.hidden = false;
      t.el.querySelector(".nopic").hidden = true;
      img.alt = `${t.name}, picture of ${new Date().toLocaleTimeString()}`;
      t.el.dataset.thumbAt = String(Date.now());
    } catch (e) { /* the next refresh tries again */ }
  }
  setInterval(() => {
    for (const t of tiles.values()) if (t.el.classList.contains("thumb-mode")) refreshThumb(t);
  }, THUMB_EVERY_MS);

  function setFocus(t, on) {
    t.el.classList.toggle("focus", on);
    t.el.querySelector(".name").setAttribute("aria-expanded", String(on));
    // Focus is a click or a key press (a user gesture), so sound may start.
    t.video.muted = !on;
    t.el.querySelector("[data-action=sound]").textContent = t.video.muted ? "Sound on" : "Sound off";
    if (on) {
      loadCatalogue(t);
      t.el.scrollIntoView({ block: "start" });
    }
    applyMode(t);
  }
  async function loadCatalogue(t) {
    if (t.catalogue) return;
    try {
      const s = await Vigil.api(`/api/sessions/${t.entry.session_id}`);
      t.catalogue = s.protocol.flags;
      t.el.querySelector(".flag-form select").replaceChildren(...t.catalogue.map((f) => {
        const o = document.createElement("option");
        o.value = f.code; o.textContent = `${f.label} (${f.priority})`;
        return o;
      }));
    } catch (e) { errorEl.textContent = e.message; }
  }
  function jumpTo(sessionId) {
    const t = tiles.get(sessionId);
    if (!t) return;
    if (!t.el.classList.contains("focus")) setFocus(t, true);
    t.el.scrollIntoView({ block: "start" });
    t.el.querySelector(".name").focus();
  }

  function addTile(entry) {
    const el = $("tile").content.firstElementChild.cloneNode(true);
    el.dataset.sessionId = entry.session_id;
    el.querySelector(".name").textContent = entry.patient.display_name;
    $("roster").appendChild(el);
    const video = el.querySelector("video");
    const stream = new MediaStream();
    video.srcObject = stream;
    const t = { el, entry, at: Date.now(), name: entry.patient.display_name, video, stream, media: null, pinned: false };
    tiles.set(entry.session_id, t);
    t.watch = Vigil.watch(signal, entry.session_id);
    t.follow = Vigil.follow(monitor, entry.session_id, {
      onError: (e) => { errorEl.textContent = e.message; },
      onState: (state) => { t.entry = { ...t.entry, ...state }; render(t, t.entry); },
      onEvent: (ev) => {
        const li = document.createElement("li");
        li.textContent = `${new Date(ev.at).toLocaleTimeString()} ${ev.type.replace(/_/g, " ")}${ev.data && ev.data.code ? `: ${ev.data.code}` : ""}${ev.data && ev.data.text ? `: ${ev.data.text}` : ""}`;
        el.querySelector(".timeline").prepend(li);
        if (["alarm_triggered", "alarm_escalated", "alarm_retriggered"].includes(ev.type) && t.ready) beep(ev.data.priority);
        scheduleRefresh();
      },
    });
    setTimeout(() => { t.ready = true; }, 2000); // replayed history does not beep
    const name = el.querySelector(".name");
    name.setAttribute("role", "button");
    name.setAttribute("aria-expanded", "false");
    name.addEventListener("click", () => setFocus(t, !el.classList.contains("focus")));
    name.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); setFocus(t, !el.classList.contains("focus")); }
    });
    el.querySelector(".vitals-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = e.target.elements;
      const body = { session_id: entry.session_id, client_id: crypto.randomUUID(), systolic: Number(f.systolic.value), diastolic: Number(f.diastolic.value) };
      if (f.heart_rate.value) body.heart_rate = Number(f.heart_rate.value);
      try { await Vigil.call(monitor, "record_vitals", body); e.target.reset(); scheduleRefresh(); }
      catch (err) { errorEl.textContent = err.message; }
    });
    el.querySelector(".flag-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = e.target.elements;
      const body = { session_id: entry.session_id, client_id: crypto.randomUUID(), code: f.code.value };
      if (f.note.value.trim()) body.note = f.note.value;
      try { await Vigil.call(monitor, "raise_flag", body); f.note.value = ""; scheduleRefresh(); }
      catch (err) { errorEl.textContent = err.message; }
    });
    el.querySelector(".note-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const input = e.target.elements.text;
      if (!input.value.trim()) return;
      try { await Vigil.call(monitor, "note", { session_id: entry.session_id, text: input.value }); input.value = ""; }
      catch (err) { errorEl.textContent = err.message; }
    });
    el.querySelectorAll("[data-action]").forEach((b) => b.addEventListener("click", async () => {
      const action = b.dataset.action;
      if (action === "sound") { video.muted = !video.muted; b.textContent = video.muted ? "Sound on" : "Sound off"; return; }
      if (action === "live") { t.pinned = !t.pinned; applyMode(t); return; }
      try {
        if (action === "request_checkin") { await Vigil.call(monitor, "request_checkin", { session_id: entry.session_id }); return; }
        const body = { session_id: entry.session_id, action };
        if (action === "end") {
          const reason = prompt("Why is this session ending early?");
          if (!reason) return;
          body.reason = reason;
        }
        try {
          const r = await Vigil.call(monitor, "act", body);
          render(t, { ...t.entry, ...r.state });
        } catch (e) {
          if (e.code !== "precheck_blocked") throw e;
          const reason = prompt(`${e.message}\n\nStart anyway? Give your reason:`);
          if (!reason) return;
          const r = await Vigil.call(monitor, "act", { ...body, reason });
          render(t, { ...t.entry, ...r.state });
        }
        scheduleRefresh();
      } catch (e) { errorEl.textContent = e.message; }
    }));
    render(t, entry);
    applyMode(t);
  }

  // -- roster snapshot, refreshed (at most twice a second) after events ---------------------
  let refreshTimer = null;
  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 500);
  }
  async function refresh() {
    let sessions;
    try { ({ sessions } = await Vigil.api("/api/roster")); } catch (e) { errorEl.textContent = e.message; return; }
    $("empty").hidden = sessions.length > 0;
    for (const entry of sessions) {
      const t = tiles.get(entry.session_id);
      if (t) render(t, entry); else addTile(entry);
    }
    // Sessions that ended or were reassigned leave the wall.
    const open = new Set(sessions.map((e) => e.session_id));
    for (const [sid, t] of tiles) {
      if (open.has(sid)) continue;
      if (t.media) t.media.stop();
      t.watch.stop();
      t.follow.stop();
      t.el.remove();
      tiles.delete(sid);
    }
    // Most urgent first (the server's order).
    // Only when the order changed: moving an element takes the keyboard focus out of it.
    const wall = $("roster");
    const order = sessions.map((entry) => tiles.get(entry.session_id).el);
    if (order.some((el, i) => wall.children[i] !== el)) {
      const focused = document.activeElement;
      order.forEach((el) => wall.appendChild(el));
      if (focused && wall.contains(focused)) focused.focus({ preventScroll: true });
    }
    for (const t of tiles.values()) applyMode(t);
    if (boardOn) await refreshBoard();
  }

  // -- on-call: the clinic's alarm board ------------------------------------------------------
  const boardOn = ["oncall", "admin"].includes(me.role);
  async function refreshBoard() {
    try {
      const r = await Vigil.call(monitor, "watch_board", {});
      $("board-list").replaceChildren(...r.alarms.map((a) => alarmItem(a, true)));
      $("board-empty").hidden = r.alarms.length > 0;
    } catch (e) { errorEl.textContent = e.message; }
  }
  if (boardOn) {
    $("board").hidden = false;
    monitor.on("board", (ev) => {
      if (ev.type === "alarm_triggered" || ev.type === "alarm_escalated" || ev.type === "alarm_retriggered") beep(ev.data.priority);
      refreshBoard();
    });
    monitor.on("connect", refreshBoard);
  }

  signal.on("presence", (p) => {
    const t = tiles.get(p.session_id);
    if (!t) return;
    const el = t.el.querySelector(".presence");
    el.textContent = p.publisher_online ? "patient online" : "patient offline";
    el.className = `presence ${p.publisher_online ? "status-online" : "status-offline"}`;
  });
  setInterval(() => {
    for (const t of tiles.values()) t.el.querySelector(".clock").textContent = Vigil.sinceDose(t.entry, t.at);
    document.querySelectorAll(".countdown").forEach((c) => {
      const next = c.dataset.next ? new Date(c.dataset.next).getTime() - Date.now() : null;
      c.textContent = next == null ? "" : next > 0 ? `next page in ${Math.ceil(next / 1000)} s` : "paging";
    });
  }, 500);
  await refresh();
  // Events refresh the wall at once; this catches what no followed session announces (a new
  // session scheduled for me, a watcher count changed by someone else) within ROSTER_EVERY_MS.
  setInterval(refresh, ROSTER_EVERY_MS);
})();
