// The clinic admin page: people (add, disable, reset a password), sessions (schedule, assign a
// clinician, make and copy invite links) and the clinic's protocol. Plain DOM over the HTTP
// API of server/admin.py and server/api.py; nothing here moves the clinical clock.
"use strict";

(async () => {
  const $ = (id) => document.getElementById(id);
  Vigil.requireToken();
  $("logout").onclick = Vigil.logout;
  let me;
  try { me = await Vigil.api("/api/me"); } catch (e) { return Vigil.logout(); }
  $("who").textContent = `${me.name} (${me.role})`;
  if (me.role !== "admin") { location.href = me.role === "patient" ? "/patient/" : "/clinician/"; return; }

  const say = (text) => { $("error").textContent = ""; $("notice").textContent = text; };
  const fail = (e) => { $("notice").textContent = ""; $("error").textContent = e.message; };
  const el = (tag, props = {}, ...children) => {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  };
  const ROLES = { patient: "Patient", clinician: "Clinician", oncall: "On-call nurse", admin: "Admin" };
  let people = [];

  // -- people -------------------------------------------------------------------------------
  const personForm = $("add-person");
  const passwordLabel = personForm.querySelector(".password");
  const syncPassword = () => {
    const patient = personForm.elements.role.value === "patient";
    passwordLabel.hidden = patient;
    personForm.elements.password.required = !patient;
  };
  personForm.elements.role.addEventListener("change", syncPassword);
  syncPassword();
  personForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = personForm.elements;
    const body = { display_name: f.display_name.value, username: f.username.value, role: f.role.value };
    if (body.role !== "patient") body.password = f.password.value;
    try {
      const user = await Vigil.api("/api/users", { method: "POST", body: JSON.stringify(body) });
      personForm.reset(); syncPassword();
      say(`${user.display_name} was added as ${ROLES[user.role].toLowerCase()} (${user.username}).`);
      await loadPeople();
    } catch (e) { fail(e); }
  });

  async function loadPeople() {
    ({ users: people } = await Vigil.api("/api/users"));
    $("people").tBodies[0].replaceChildren(...people.map((u) => {
      const toggle = el("button", { className: "secondary", textContent: u.active ? "Disable" : "Enable" });
      toggle.setAttribute("aria-label", `${u.active ? "Disable" : "Enable"} ${u.display_name}`);
      toggle.disabled = `user:${u.id}` === me.subject; // the server refuses it too
      toggle.onclick = async () => {
        if (u.active && !confirm(`Disable ${u.display_name}? They are signed out at once.`)) return;
        try {
          await Vigil.api(`/api/users/${u.id}`, { method: "PATCH", body: JSON.stringify({ active: !u.active }) });
          say(`${u.display_name} is ${u.active ? "disabled" : "enabled"}.`);
          await loadPeople();
        } catch (e) { fail(e); }
      };
      const actions = el("div", { className: "row" }, toggle);
      if (u.role !== "patient") {
        const reset = el("button", { className: "secondary", textContent: "New password" });
        reset.setAttribute("aria-label", `Set a new password for ${u.display_name}`);
        reset.onclick = async () => {
          const password = prompt(`New password for ${u.display_name} (at least 10 characters):`);
          if (!password) return;
          try {
            await Vigil.api(`/api/users/${u.id}`, { method: "PATCH", body: JSON.stringify({ password }) });
            say(`${u.display_name}'s password was changed.`);
          } catch (e) { fail(e); }
        };
        actions.append(reset);
      }
      const row = el("tr", {}, el("td", { textContent: u.display_name }), el("td", { textContent: u.username }),
        el("td", { textContent: ROLES[u.role] || u.role }), el("td", { textContent: u.active ? "Active" : "Disabled" }),
        el("td", {}, actions));
      row.dataset.username = u.username;
      row.classList.toggle("disabled", !u.active);
      return row;
    }));
    const options = (role) => people.filter((u) => u.role === role && u.active)
      .map((u) => el("option", { value: String(u.id), textContent: u.display_name }));
    const sf = $("schedule").elements;
    const keep = [sf.patient_id.value, sf.clinician_id.value];
    sf.patient_id.replaceChildren(...options("patient"));
    sf.clinician_id.replaceChildren(el("option", { value: "", textContent: "Not assigned yet" }), ...options("clinician"));
    [sf.patient_id.value, sf.clinician_id.value] = keep;
    if (!sf.patient_id.value && sf.patient_id.options.length) sf.patient_id.selectedIndex = 0;
  }

  // -- sessions -------------------------------------------------------------------------------
  // The next quarter hour, in the admin's local time (datetime-local has no time zone).
  const soon = new Date(Math.ceil(Date.now() / 900000) * 900000);
  const local = (d) => new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  $("schedule").elements.start.value = local(soon);
  $("schedule").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = $("schedule").elements;
    const start = new Date(f.start.value); // local time → an instant, sent with its zone (UTC)
    const body = { patient_id: Number(f.patient_id.value), scheduled_start: start.toISOString() };
    if (f.clinician_id.value) body.clinician_id = Number(f.clinician_id.value);
    try {
      await Vigil.api("/api/sessions", { method: "POST", body: JSON.stringify(body) });
      say(`A session for ${f.patient_id.selectedOptions[0].textContent} is scheduled for ${start.toLocaleString()}.`);
      await loadSessions();
    } catch (e) { fail(e); }
  });

  async function invite(s, role) {
    let name = s.patient.display_name;
    if (role !== "patient") {
      name = prompt(role === "sitter" ? "The sitter's name:" : "The guide's name:");
      if (!name) return;
    }
    try {
      const r = await Vigil.api(`/api/sessions/${s.session_id}/invites`, {
        method: "POST", body: JSON.stringify({ role, name }),
      });
      $("link").hidden = false;
      $("link-label").textContent = `${role[0].toUpperCase()}${role.slice(1)} link for ${name} (${s.patient.display_name}'s session)`;
      $("link-url").value = r.url;
      $("link-expiry").textContent = `Works until ${new Date(r.expires_at).toLocaleString()}, unless revoked.`;
      $("link-url").focus(); $("link-url").select();
      say(`A ${role} link was made. Copy it and send it privately.`);
    } catch (e) { fail(e); }
  }
  $("copy-link").onclick = async () => {
    const url = $("link-url").value;
    try { await navigator.clipboard.writeText(url); say("The link is copied."); }
    catch (e) { $("link-url").select(); document.execCommand("copy"); say("The link is selected and copied."); }
  };

  async function loadSessions() {
    const { sessions } = await Vigil.api("/api/sessions");
    const clinicians = people.filter((u) => u.role === "clinician" && u.active);
    $("sessions").tBodies[0].replaceChildren(...sessions.map((s) => {
      const assign = el("select", {}, el("option", { value: "", textContent: "Not assigned" }),
        ...clinicians.map((c) => el("option", { value: String(c.id), textContent: c.display_name })));
      assign.value = s.clinician_id == null ? "" : String(s.clinician_id);
      assign.setAttribute("aria-label", `Clinician for ${s.patient.display_name}`);
      assign.onchange = async () => {
        try {
          await Vigil.api(`/api/sessions/${s.session_id}`, {
            method: "PATCH", body: JSON.stringify({ clinician_id: assign.value ? Number(assign.value) : null }),
          });
          say(`${s.patient.display_name}'s session is now ${assign.value ? `assigned to ${assign.selectedOptions[0].textContent}` : "unassigned"}.`);
        } catch (e) { fail(e); await loadSessions(); }
      };
      const links = el("div", { className: "row" }, ...["patient", "sitter", "guide"].map((role) => {
        const b = el("button", { className: role === "patient" ? "" : "secondary", textContent: `${role[0].toUpperCase()}${role.slice(1)} link` });
        b.setAttribute("aria-label", `Make a ${role} link for ${s.patient.display_name}'s session`);
        b.onclick = () => invite(s, role);
        return b;
      }));
      const phase = el("span", { className: `phase ${s.phase}`, textContent: Vigil.PHASES[s.phase] || s.phase });
      const row = el("tr", {}, el("td", { textContent: s.patient.display_name }),
        el("td", { textContent: s.scheduled_start ? new Date(s.scheduled_start).toLocaleString() : "—" }),
        el("td", {}, phase), el("td", {}, assign), el("td", {}, links));
      row.dataset.sessionId = s.session_id;
      return row;
    }));
  }

  // -- protocol -------------------------------------------------------------------------------
  const SUMMARY = [
    ["Active phase", (p) => `${p.active_minutes_from_dose} min from the dose`],
    ["Recovery", (p) => `${p.recovery_minutes} min`],
    ["Check-ins", (p) => `every ${p.checkin_every_minutes} min, missed after ${p.checkin_grace_minutes} min`],
    ["Blood pressure asked at", (p) => `${p.vitals_at_minutes.map((m) => `+${m}`).join(", ")} min`],
    ["Dosing blocked above", (p) => `${p.max_systolic}/${p.max_diastolic} mmHg, ${p.max_heart_rate} bpm`],
    ["Side-effect flags", (p) => `${p.flags.length}`],
  ];
  function showProtocol(r) {
    $("protocol-summary").replaceChildren(...SUMMARY.flatMap(([k, f]) => [el("dt", { textContent: k }), el("dd", { textContent: f(r.protocol) })]));
    $("protocol-text").value = JSON.stringify(r.protocol, null, 2);
    $("protocol-state").textContent = r.custom ? "This clinic's own protocol." : "The default protocol.";
  }
  async function saveProtocol(document_) {
    try {
      const r = await Vigil.api("/api/protocol", { method: "PUT", body: JSON.stringify({ protocol: document_ }) });
      showProtocol(r);
      say("The protocol is saved; sessions scheduled from now on use it.");
    } catch (e) { fail(e); }
  }
  $("protocol-save").onclick = () => {
    let parsed;
    try { parsed = JSON.parse($("protocol-text").value); }
    catch (e) { return fail(new Error(`The protocol is not valid JSON: ${e.message}`)); }
    saveProtocol(parsed);
  };
  $("protocol-defaults").onclick = () => {
    if (confirm("Go back to the default protocol for new sessions?")) saveProtocol(null);
  };

  try {
    await loadPeople();
    await loadSessions();
    showProtocol(await Vigil.api("/api/protocol"));
  } catch (e) { fail(e); }
})();
