// The patient's page: device check → waiting room → pre-check → the session (clock, check-ins,
// blood pressure, emergency) → journal. Every command carries a client-made id and is retried
// with the same id, so a lost acknowledgement never stores a report twice.
"use strict";

(async () => {
  const $ = (id) => document.getElementById(id);
  const STEPS = ["step-devices", "step-lobby", "step-precheck", "step-session", "step-done"];
  const PHASE_TEXT = {
    dosing: "Let the tablet dissolve under your tongue. Don't swallow; relax.",
    active: "Close your eyes if you like, and let the music carry you. We are watching over you.",
    recovery: "The effects are fading. Stay seated; your sitter is with you.",
    awaiting_signoff: "Your clinician will check in with you shortly to finish.",
  };
  Vigil.requireToken();
  const errorEl = $("error");
  const fail = (msg) => { errorEl.textContent = msg; };

  let me;
  try { me = await Vigil.api("/api/me"); } catch (e) { fail(e.message); return; }
  $("who").textContent = me.name;
  let sessionId = me.session_id;
  if (!sessionId) {
    const { sessions } = await Vigil.api("/api/sessions");
    if (!sessions.length) { fail("You have no open session."); return; }
    sessionId = sessions[0].session_id;
  }
  const session = await Vigil.api(`/api/sessions/${sessionId}`);

  function showStep(id) {
    for (const s of STEPS) $(s).hidden = s !== id;
    document.body.dataset.step = id;
  }

  // -- 1. device check -------------------------------------------------------------------
  showStep("step-devices");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  } catch (e) {
    $("check-camera").textContent = `Camera or microphone unavailable: ${e.message}`;
    $("check-camera").className = "fail";
    return;
  }
  $("preview").srcObject = stream;
  $("preview").addEventListener("loadedmetadata", () => {
    $("check-camera").textContent = "Camera: working";
    $("check-camera").className = "pass";
    $("devices-ok").disabled = false;
  }, { once: true });
  try {
    const ctx = new AudioContext();
    const analyser = ctx.createAnalyser();
    ctx.createMediaStreamSource(stream).connect(analyser);
    const data = new Uint8Array(analyser.fftSize);
    const tick = () => {
      analyser.getByteTimeDomainData(data);
      let peak = 0;
      for (const v of data) peak = Math.max(peak, Math.abs(v - 128) / 128);
      $("mic-level").value = peak;
      if (peak > 0.02) $("check-mic").className = "pass";
      if (!$("step-devices").hidden) requestAnimationFrame(tick);
    };
    tick();
  } catch (e) { /* no meter; the clinician will still hear the patient */ }
  (async () => {
    const times = [];
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      try { await fetch("/healthz", { cache: "no-store" }); } catch (e) { break; }
      times.push(performance.now() - t0);
    }
    const el = $("check-network");
    if (times.length === 3) {
      el.textContent = `Connection: good (${Math.round(Math.max(...times))} ms)`;
      el.className = "pass";
    } else {
      el.textContent = "Connection: the server cannot be reached";
      el.className = "fail";
    }
  })();
  // Checked once per browser session: a reload (or a crash of the tab) goes straight back in.
  const checkedKey = `vigil.devices-checked.${sessionId}`;
  if (!sessionStorage.getItem(checkedKey)) {
    await new Promise((resolve) => $("devices-ok").addEventListener("click", resolve, { once: true }));
    sessionStorage.setItem(checkedKey, "1");
  }

  // -- connections -------------------------------------------------------------------------
  const banner = $("banner");
  const setBanner = (text) => { banner.textContent = text || ""; banner.hidden = !text; };
  const signal = Vigil.socket("/signal", (d) => fail(d.message));
  const monitor = Vigil.socket("/monitor", (d) => fail(d.message));
  signal.on("disconnect", () => setBanner("Connection lost — reconnecting by itself…"));
  monitor.on("disconnect", () => setBanner("Connection lost — reconnecting by itself…"));
  $("self").srcObject = stream;
  Vigil.media(signal, sessionId, "publisher", {
    stream,
    onStatus: (s) => {
      document.body.dataset.media = s;
      if (s === "connected") setBanner("");
      else if (s === "replaced") setBanner("Your session continues in another window or device.");
      else if (s === "failed" || s === "disconnected") setBanner("Video interrupted — reconnecting…");
    },
  });

  // A command with a client-made id, retried with the same id until acknowledged.
  async function send(event, data, attempts = 4) {
    const payload = { session_id: sessionId, client_id: crypto.randomUUID(), ...data };
    for (let i = 1; ; i++) {
      try { return await Vigil.call(monitor, event, payload); } catch (e) {
        if (e.code || i >= attempts) throw e; // refused for a reason: retrying won't help
        await new Promise((r) => setTimeout(r, 1000 * i));
      }
    }
  }

  // -- state and events --------------------------------------------------------------------
  let state = null;
  let stateAt = 0;
  let precheckSent = Boolean(session.precheck && session.precheck.address_confirmed);
  function render(s) {
    state = s; stateAt = Date.now();
    document.body.dataset.phase = s.phase;
    const terminal = ["completed", "ended_early"].includes(s.phase);
    $("emergency").hidden = terminal;
    if (s.phase === "lobby") showStep("step-lobby");
    else if (s.phase === "pre_check") {
      showStep(precheckSent ? "step-lobby" : "step-precheck");
    } else if (terminal) {
      showStep("step-done");
      $("done-title").textContent = s.phase === "completed" ? "Your session is complete" : "Your session has ended";
      for (const p of ["checkin", "vitals"]) $(p).hidden = true;
    } else {
      showStep("step-session");
      $("phase").textContent = Vigil.PHASES[s.phase] || s.phase;
      $("phase").className = `phase ${s.phase}`;
      $("phase-text").textContent = PHASE_TEXT[s.phase] || "";
    }
    if (s.phase === "recovery" || terminal) $("journal").hidden = false;
  }
  function timeLeft() {
    if (!state || !state.phase_deadline) { $("time-left").textContent = ""; return; }
    const realMs = new Date(state.phase_deadline).getTime() - Date.now();
    const minutes = Math.max(0, Math.ceil((realMs / 60000) * state.time_scale));
    $("time-left").textContent = minutes <= 1 ? "about a minute left" : `about ${minutes} minutes left`;
  }
  setInterval(timeLeft, 1000);

  function onEvent(ev) {
    if (ev.type === "checkin_due") {
      if (ev.data.kind === "vitals") { $("vitals").hidden = false; $("vitals").querySelector("input").focus(); }
      else { $("checkin").hidden = false; $("im-ok").focus(); }
    } else if (ev.type === "checkin_answered") {
      $(ev.data.kind === "vitals" ? "vitals" : "checkin").hidden = true;
    } else if (ev.type === "journal_prompted") {
      $("journal").hidden = false;
    }
  }
  Vigil.follow(monitor, sessionId, { onState: render, onEvent, onError: (e) => fail(e.message) });
  monitor.on("connect", () => setBanner(""));

  // -- pre-check ---------------------------------------------------------------------------
  $("precheck").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const form = ev.target;
    const answers = {
      sitter_name: f.get("sitter_name"), sitter_phone: f.get("sitter_phone"),
      sitter_is_adult: form.sitter_is_adult.checked, address: f.get("address"),
      address_confirmed: form.address_confirmed.checked, fasting: form.fasting.checked,
      medication_changes: f.get("medication_changes"), intention: f.get("intention") || "",
      emergency_contact_name: f.get("emergency_contact_name"),
      emergency_contact_phone: f.get("emergency_contact_phone"),
    };
    try {
      await Vigil.call(monitor, "precheck", { session_id: sessionId, answers });
      const vitals = { systolic: Number(f.get("systolic")), diastolic: Number(f.get("diastolic")) };
      if (f.get("heart_rate")) vitals.heart_rate = Number(f.get("heart_rate"));
      await send("record_vitals", vitals);
      precheckSent = true;
      $("precheck-status").textContent = "Thank you. Your clinician will look at this and start when ready.";
      setTimeout(() => state && render(state), 1500);
    } catch (e) { $("precheck-status").textContent = `Not sent: ${e.message}`; }
  });

  // -- check-ins ---------------------------------------------------------------------------
  const chosen = new Set();
  for (const flag of session.protocol.flags) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = flag.label; b.dataset.code = flag.code;
    b.setAttribute("aria-pressed", "false");
    b.addEventListener("click", () => {
      if (chosen.has(flag.code)) chosen.delete(flag.code); else chosen.add(flag.code);
      b.setAttribute("aria-pressed", String(chosen.has(flag.code)));
    });
    $("flag-choices").appendChild(b);
  }
  async function answer(ok) {
    try {
      await send("answer_checkin", { ok: ok && chosen.size === 0, flags: [...chosen] });
      chosen.clear();
      $("flag-choices").querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", "false"));
      $("checkin").hidden = true;
    } catch (e) { fail(`Not sent: ${e.message}`); }
  }
  $("im-ok").addEventListener("click", () => answer(true));
  $("not-ok").addEventListener("click", () => answer(false));
  $("vitals-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const vitals = { systolic: Number(f.get("systolic")), diastolic: Number(f.get("diastolic")) };
    if (f.get("heart_rate")) vitals.heart_rate = Number(f.get("heart_rate"));
    try { await send("record_vitals", vitals); $("vitals").hidden = true; ev.target.reset(); }
    catch (e) { fail(`Not sent: ${e.message}`); }
  });

  // -- emergency ---------------------------------------------------------------------------
  $("emergency").addEventListener("click", () => $("emergency-confirm").showModal());
  $("emergency-no").addEventListener("click", () => $("emergency-confirm").close());
  $("emergency-yes").addEventListener("click", async () => {
    $("emergency-confirm").close();
    try {
      await send("emergency", {}, 8);
      setBanner("Help is being called. Stay where you are; your sitter and clinician are alerted.");
    } catch (e) { fail(`Emergency not sent (${e.message}). Call your local emergency number.`); }
  });

  // -- journal -----------------------------------------------------------------------------
  $("journal-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await send("journal", { text: new FormData(ev.target).get("text") });
      $("journal-status").textContent = "Saved.";
      ev.target.reset();
    } catch (e) { $("journal-status").textContent = `Not saved: ${e.message}`; }
  });

  // -- calm sound: soft brown noise made in the browser (nothing to download) --------------
  let audio = null;
  $("music").addEventListener("click", () => {
    if (audio) { audio.close(); audio = null; $("music").textContent = "Play calm sound"; return; }
    audio = new AudioContext();
    const seconds = 4;
    const buffer = audio.createBuffer(1, audio.sampleRate * seconds, audio.sampleRate);
    const out = buffer.getChannelData(0);
    let last = 0;
    for (let i = 0; i < out.length; i++) {
      last = (last + 0.02 * (Math.random() * 2 - 1)) / 1.02;
      out[i] = last * 3.5;
    }
    const src = audio.createBufferSource();
    src.buffer = buffer; src.loop = true;
    const gain = audio.createGain(); gain.gain.value = 0.25;
    src.connect(gain).connect(audio.destination); src.start();
    $("music").textContent = "Stop calm sound";
  });
})();
