// Warren's web UI: a page over the management API, with the same basic-auth users. Every
// value from the broker goes into the page as text (never as HTML), so a queue named like
// markup stays a name. Rates are computed here from successive samples of the API's
// counters, one every 5 s, kept for the last 5 minutes.
"use strict";

const SAMPLE_MS = 5000;
const KEEP = 60;
const history = new Map();
let refreshTimer = null;

const auth = {
  get: () => sessionStorage.getItem("warren.auth"),
  set: (user, password) => sessionStorage.setItem("warren.auth", btoa(unescape(encodeURIComponent(user + ":" + password)))),
  clear: () => sessionStorage.removeItem("warren.auth"),
};

async function api(method, path, body) {
  // X-Requested-With: the API then answers a failed login without a challenge, which would
  // open the browser's own login prompt.
  const headers = { Authorization: "Basic " + auth.get(), "X-Requested-With": "XMLHttpRequest" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch("/api/" + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 401) {
    auth.clear();
    throw new Error("Login failed");
  }
  const text = await r.text();
  let value = null;
  try { value = text ? JSON.parse(text) : null; } catch (_) { value = text; }
  if (!r.ok) {
    const reason = value && value.reason ? value.reason : r.status + " " + r.statusText;
    const e = new Error(reason);
    e.status = r.status;
    e.value = value;
    throw e;
  }
  return value;
}

// A name as one path segment. `.` and `..` cannot be one: the browser resolves them (and
// their %2E spellings) as dot segments, so a request for them would reach another path.
const addressable = (s) => s !== "." && s !== "..";

function seg(s) {
  if (s === "." || s === "..") throw new Error(`'${s}' cannot be named in a URL: use a client for it`);
  return encodeURIComponent(s);
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function table(columns, rows, rowAttrs) {
  return el("table", {},
    el("thead", {}, el("tr", {}, columns.map(([h]) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", rowAttrs ? rowAttrs(r) : {},
      columns.map(([, f, cls, field]) => el("td", { class: cls, "data-field": field }, f(r)))))));
}

function sparkline(values, width = 120, height = 24) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("role", "img");
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? width / (KEEP - 1) : 0;
  const points = values.map((v, i) => `${(width - step * (values.length - 1 - i)).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.append(line);
  const title = document.createElementNS(ns, "title");
  title.textContent = `last ${values.length} samples, peak ${max.toFixed(1)}/s`;
  svg.append(title);
  return svg;
}

// Records counter `value` under `key`; the per-second rates between samples so far.
function sample(key, value) {
  const now = Date.now();
  const h = history.get(key) || [];
  if (typeof value === "number") h.push({ t: now, v: value });
  while (h.length > KEEP + 1) h.shift();
  history.set(key, h);
  const rates = [];
  for (let i = 1; i < h.length; i++) {
    const dt = (h[i].t - h[i - 1].t) / 1000;
    rates.push(dt > 0 ? Math.max(0, (h[i].v - h[i - 1].v) / dt) : 0);
  }
  return rates;
}

function rateCell(key, value) {
  const rates = sample(key, value);
  const last = rates.length ? rates[rates.length - 1] : 0;
  return el("span", {}, sparkline(rates), " ", last.toFixed(1) + "/s");
}

function message(text, isError) {
  return el("p", { id: "result", class: isError ? "error" : "ok", role: "status" }, text);
}

async function attempt(target, f) {
  try {
    const text = await f();
    target.replaceChildren(message(text || "done", false));
  } catch (e) {
    target.replaceChildren(message(e.message, true));
  }
}

// Views: each renders into `view` and may return a refresh function run every 5 s.

async function overview(view) {
  const body = el("div");
  view.replaceChildren(el("h1", {}, "Overview"), body);
  const refresh = async () => {
    const o = await api("GET", "overview");
    let alarm;
    try {
      await api("GET", "health/checks/alarms");
      alarm = el("p", { class: "ok", id: "alarms" }, "No alarms");
    } catch (e) {
      alarm = el("p", { class: "alarm", id: "alarms" }, e.message);
    }
    const t = o.object_totals || {};
    const q = o.queue_totals || {};
    const s = o.message_stats || {};
    const card = (label, value, id) => el("div", { class: "card" }, el("div", {}, label), el("div", { class: "value", id }, value));
    body.replaceChildren(
      alarm,
      el("div", { class: "cards" },
        card("Connections", t.connections, "total-connections"), card("Channels", t.channels),
        card("Queues", t.queues, "total-queues"), card("Consumers", t.consumers),
        card("Ready", q.messages_ready), card("Unacked", q.messages_unacknowledged)),
      el("h2", {}, "Message rates"),
      table([["", (r) => r[0]], ["rate", (r) => rateCell("overview." + r[1], s[r[1]])]],
        [["Published", "publish"], ["Delivered", "deliver_get"], ["Acknowledged", "ack"]]),
      el("p", {}, `${o.product_name} ${o.product_version} on ${o.node}`));
  };
  await refresh();
  return refresh;
}

function deadLettered(q) {
  const d = q.dead_lettered || {};
  const parts = Object.entries(d).filter(([, n]) => n > 0).map(([r, n]) => `${r}: ${n}`);
  return parts.length ? parts.join(", ") : "—";
}

async function queues(view) {
  const list = el("div");
  const out = el("div");
  const form = el("form", { class: "inline", id: "declare-queue" },
    el("label", {}, "Vhost", el("input", { name: "vhost", value: "/" })),
    el("label", {}, "Name", el("input", { name: "name", required: true })),
    el("label", {}, "Durable", el("input", { name: "durable", type: "checkbox", checked: true })),
    el("button", { type: "submit" }, "Declare queue"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    attempt(out, async () => {
      await api("PUT", `queues/${seg(f.get("vhost"))}/${seg(f.get("name"))}`, { durable: f.get("durable") === "on" });
      await refresh();
      return `queue '${f.get("name")}' declared`;
    });
  });
  view.replaceChildren(el("h1", {}, "Queues"), list, el("h2", {}, "Add a queue"), form, out);
  const refresh = async () => {
    const qs = await api("GET", "queues");
    list.replaceChildren(table([
      ["Vhost", (q) => q.vhost],
      ["Name", (q) => (addressable(q.vhost) && addressable(q.name)
        ? el("a", { href: `#/queue/${seg(q.vhost)}/${seg(q.name)}` }, q.name) : q.name)],
      ["Ready", (q) => q.messages_ready, "num", "ready"],
      ["Unacked", (q) => q.messages_unacknowledged, "num", "unacked"],
      ["Consumers", (q) => q.consumers, "num"],
      ["Incoming", (q) => rateCell(`q.${q.vhost}.${q.name}.publish`, (q.message_stats || {}).publish)],
      ["Delivered", (q) => rateCell(`q.${q.vhost}.${q.name}.deliver`, (q.message_stats || {}).deliver_get)],
      ["Dead-lettered", deadLettered],
      ["Retry-delayed", (q) => q.retry_delayed, "num"],
      ["DLQ", (q) => (q.dead_letter_target ? "yes" : "")],
    ], qs, (q) => ({ "data-queue": `${q.vhost}/${q.name}` })));
  };
  await refresh();
  return refresh;
}

async function queuePage(view, vhost, name) {
  const path = `queues/${seg(vhost)}/${seg(name)}`;
  const details = el("div");
  const out = el("div", { id: "queue-result" });
  const messages = el("div", { id: "messages" });
  const get = el("form", { class: "inline", id: "get-messages" },
    el("label", {}, "Messages", el("input", { name: "count", type: "number", value: "5", min: "1", max: "1000" })),
    el("label", {}, "Then", el("select", { name: "ackmode" },
      el("option", { value: "ack_requeue_true" }, "requeue them"),
      el("option", { value: "ack_requeue_false" }, "remove them"))),
    el("button", { type: "submit" }, "Get messages"));
  get.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(get);
    attempt(out, async () => {
      const got = await api("POST", `${path}/get`, { count: Number(f.get("count")), ackmode: f.get("ackmode"), encoding: "auto", truncate: 50000 });
      messages.replaceChildren(table([
        ["#", (m, i) => got.indexOf(m) + 1, "num"],
        ["Routing key", (m) => m.routing_key],
        ["Redelivered", (m) => String(m.redelivered)],
        ["Payload", (m) => el("pre", {}, m.payload)],
      ], got));
      await refresh();
      return `${got.length} message(s)`;
    });
  });
  const purge = el("button", { id: "purge", class: "danger" }, "Purge");
  purge.addEventListener("click", () => attempt(out, async () => {
    await api("DELETE", `${path}/contents`);
    await refresh();
    return "purged";
  }));
  const replay = el("button", { id: "replay" }, "Replay dead letters");
  replay.addEventListener("click", () => attempt(out, async () => {
    const r = await api("POST", `${path}/replay`);
    await refresh();
    return `moved ${r.moved}, skipped ${r.skipped}, refused ${r.refused}`;
  }));
  const del = el("button", { id: "delete-queue", class: "danger" }, "Delete queue");
  del.addEventListener("click", () => attempt(out, async () => {
    await api("DELETE", path);
    location.hash = "#/queues";
    return "deleted";
  }));
  const background = formOf("replay-task", [["Messages a second", "rate", { type: "number", value: "1000", min: "1", max: "100000" }]],
    "Replay in the background", (f) => attempt(out, async () => {
      const t = await api("POST", "replays", { vhost, queue: name, rate: Number(f.get("rate")) });
      await refresh();
      return `replay ${t.id} started`;
    }));
  const tasks = el("div", { id: "replays" });
  view.replaceChildren(el("h1", {}, `Queue ${name} in ${vhost}`), details,
    el("div", { class: "inline" }, purge, " ", replay, " ", del), out,
    el("h2", {}, "Background replays"), background, tasks,
    el("h2", {}, "Get messages"), get, messages);
  const refresh = async () => {
    const q = await api("GET", path);
    const mine = (await api("GET", "replays")).filter((t) => t.vhost === vhost && t.queue === name);
    tasks.replaceChildren(table([
      ["#", (t) => t.id, "num"], ["Status", (t) => t.status], ["Moved", (t) => t.moved, "num"],
      ["Skipped", (t) => t.skipped, "num"], ["Refused", (t) => t.refused, "num"], ["Rate", (t) => `${t.rate}/s`],
      ["", (t) => {
        if (t.status !== "running") return "";
        const b = el("button", { class: "danger" }, "Cancel");
        b.addEventListener("click", () => attempt(out, async () => { await api("DELETE", `replays/${t.id}`); await refresh(); return `replay ${t.id} cancelled`; }));
        return b;
      }],
    ], mine));
    const bindings = await api("GET", `${path}/bindings`);
    details.replaceChildren(
      table([["", (r) => r[0]], ["", (r) => r[1], "num"]], [
        ["Ready", q.messages_ready], ["Unacked", q.messages_unacknowledged], ["Consumers", q.consumers],
        ["Retry-delayed", q.retry_delayed], ["Dead-lettered", deadLettered(q)],
        ["Receives dead letters", q.dead_letter_target ? "yes" : "no"], ["Durable", String(q.durable)],
        ["Arguments", JSON.stringify(q.arguments)],
      ], (r) => ({ "data-row": r[0] })),
      el("h2", {}, "Bindings"),
      table([["From", (b) => b.source || "(default)"], ["Routing key", (b) => b.routing_key]], bindings));
  };
  await refresh();
  return refresh;
}

async function exchanges(view) {
  const xs = await api("GET", "exchanges");
  const bs = await api("GET", "bindings");
  view.replaceChildren(el("h1", {}, "Exchanges"),
    table([["Vhost", (x) => x.vhost], ["Name", (x) => x.name || "(default)"], ["Type", (x) => x.type],
      ["Durable", (x) => String(x.durable)], ["Internal", (x) => String(x.internal)]], xs),
    el("h2", {}, "Bindings"),
    table([["Vhost", (b) => b.vhost], ["Source", (b) => b.source || "(default)"], ["Destination", (b) => b.destination],
      ["Type", (b) => b.destination_type], ["Routing key", (b) => b.routing_key]], bs));
}

async function connections(view) {
  const out = el("div");
  const list = el("div");
  view.replaceChildren(el("h1", {}, "Connections"), out, list);
  const refresh = async () => {
    const cs = await api("GET", "connections");
    const chs = await api("GET", "channels");
    list.replaceChildren(
      table([["Name", (c) => c.name], ["User", (c) => c.user], ["Vhost", (c) => c.vhost], ["Channels", (c) => c.channels, "num"],
        ["", (c) => {
          const b = el("button", { class: "danger" }, "Close");
          b.addEventListener("click", () => attempt(out, async () => {
            await api("DELETE", `connections/${seg(c.name)}`);
            await refresh();
            return `connection ${c.name} closed`;
          }));
          return b;
        }]], cs),
      el("h2", {}, "Channels"),
      table([["Name", (c) => c.name], ["User", (c) => c.user], ["Vhost", (c) => c.vhost],
        ["Consumers", (c) => c.consumer_count, "num"], ["Unacked", (c) => c.messages_unacknowledged, "num"],
        ["Prefetch", (c) => c.prefetch_count, "num"]], chs));
  };
  await refresh();
  return refresh;
}

function formOf(id, fields, submit, onSubmit) {
  const f = el("form", { class: "inline", id },
    fields.map(([label, name, attrs]) => el("label", {}, label, el("input", Object.assign({ name }, attrs || {})))),
    el("button", { type: "submit" }, submit));
  f.addEventListener("submit", (ev) => { ev.preventDefault(); onSubmit(new FormData(f)); });
  return f;
}

async function admin(view) {
  const out = el("div");
  const body = el("div");
  view.replaceChildren(el("h1", {}, "Users, vhosts and permissions"), out, body);
  const run = (f) => attempt(out, async () => { const r = await f(); await refresh(); return r; });
  // The path is made at the click: a name that cannot be in one fails that action alone.
  const remove = (label, path, what) => {
    const b = el("button", { class: "danger" }, label);
    b.addEventListener("click", () => run(async () => { await api("DELETE", path()); return `${what} deleted`; }));
    return b;
  };
  const refresh = async () => {
    const [users, vhosts, perms] = await Promise.all([api("GET", "users"), api("GET", "vhosts"), api("GET", "permissions")]);
    body.replaceChildren(
      el("h2", {}, "Users"),
      table([["Name", (u) => u.name], ["Tags", (u) => (u.tags || []).join(", ")], ["", (u) => remove("Delete", () => `users/${seg(u.name)}`, `user ${u.name}`)]], users),
      // Not the browser's saved login: that would make this form change the admin's own user.
      formOf("add-user", [["Name", "name", { required: true, autocomplete: "off" }],
        ["Password", "password", { type: "password", required: true, autocomplete: "new-password" }], ["Tags", "tags"]],
        "Add user", (f) => run(async () => {
          const body = { password: f.get("password") };
          if (f.get("tags")) body.tags = f.get("tags");
          await api("PUT", `users/${seg(f.get("name"))}`, body);
          return `user ${f.get("name")} set`;
        })),
      el("h2", {}, "Vhosts"),
      table([["Name", (v) => v.name], ["", (v) => (v.name === "/" ? "" : remove("Delete", () => `vhosts/${seg(v.name)}`, `vhost ${v.name}`))]], vhosts),
      formOf("add-vhost", [["Name", "name", { required: true }]], "Add vhost", (f) => run(async () => {
        await api("PUT", `vhosts/${seg(f.get("name"))}`, {});
        return `vhost ${f.get("name")} added`;
      })),
      el("h2", {}, "Permissions"),
      table([["User", (p) => p.user], ["Vhost", (p) => p.vhost], ["Configure", (p) => p.configure], ["Write", (p) => p.write],
        ["Read", (p) => p.read], ["", (p) => remove("Clear", () => `permissions/${seg(p.vhost)}/${seg(p.user)}`, "permissions")]], perms),
      formOf("set-permissions", [["User", "user", { required: true }], ["Vhost", "vhost", { value: "/" }], ["Configure", "configure", { value: ".*" }],
        ["Write", "write", { value: ".*" }], ["Read", "read", { value: ".*" }]], "Set permissions", (f) => run(async () => {
        await api("PUT", `permissions/${seg(f.get("vhost"))}/${seg(f.get("user"))}`,
          { configure: f.get("configure"), write: f.get("write"), read: f.get("read") });
        return "permissions set";
      })));
  };
  await refresh();
}

async function definitions(view) {
  const out = el("div");
  const exportButton = el("button", { id: "export" }, "Export definitions");
  const link = el("span");
  exportButton.addEventListener("click", () => attempt(out, async () => {
    const defs = await api("GET", "definitions");
    const url = URL.createObjectURL(new Blob([JSON.stringify(defs, null, 2)], { type: "application/json" }));
    for (const a of link.querySelectorAll("a")) URL.revokeObjectURL(a.href);
    link.replaceChildren(el("a", { href: url, download: "warren-definitions.json" }, "warren-definitions.json"));
    return "exported: the file holds password hashes";
  }));
  const text = el("textarea", { id: "import-text", rows: "10", cols: "80", placeholder: "RabbitMQ definitions JSON" });
  const file = el("input", { type: "file", accept: "application/json,.json" });
  file.addEventListener("change", async () => { if (file.files[0]) text.value = await file.files[0].text(); });
  const importButton = el("button", { id: "import" }, "Import definitions");
  importButton.addEventListener("click", () => attempt(out, async () => {
    await api("POST", "definitions", JSON.parse(text.value));
    return "imported";
  }));
  view.replaceChildren(el("h1", {}, "Definitions"), out, exportButton, " ", link,
    el("h2", {}, "Import"), file, el("br"), text, el("br"), importButton);
}

const routes = [
  [/^#\/overview$/, overview],
  [/^#\/queues$/, queues],
  [/^#\/queue\/([^/]+)\/([^/]+)$/, (v, a, b) => queuePage(v, decodeURIComponent(a), decodeURIComponent(b))],
  [/^#\/exchanges$/, exchanges],
  [/^#\/connections$/, connections],
  [/^#\/admin$/, admin],
  [/^#\/definitions$/, definitions],
];

let generation = 0;

async function route() {
  clearInterval(refreshTimer);
  // A view still loading when the page moves on must not start its refresh afterwards.
  const mine = ++generation;
  if (!auth.get()) return showLogin("");
  const hash = location.hash || "#/overview";
  const view = document.getElementById("view");
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", hash.startsWith(a.getAttribute("href")));
  const found = routes.find(([re]) => re.test(hash));
  if (!found) { location.hash = "#/overview"; return; }
  try {
    const refresh = await found[1](view, ...hash.match(found[0]).slice(1));
    if (typeof refresh === "function" && mine === generation) {
      refreshTimer = setInterval(() => refresh().catch((e) => {
        if (!auth.get()) return showLogin(e.message);
        view.prepend(message(e.message, true));
      }), SAMPLE_MS);
    }
  } catch (e) {
    if (e.status === undefined && !auth.get()) return showLogin(e.message);
    view.replaceChildren(message(e.message, true));
  }
}

function showLogin(error) {
  generation++;
  clearInterval(refreshTimer);
  document.getElementById("login").hidden = false;
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("view").replaceChildren();
  document.getElementById("who").textContent = "";
  document.getElementById("login-error").textContent = error;
}

async function loggedIn() {
  const me = await api("GET", "whoami");
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent = `${me.name} (${(me.tags || []).join(", ") || "no tags"})`;
  await route();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    auth.set(document.getElementById("login-user").value, document.getElementById("login-password").value);
    loggedIn().catch((e) => showLogin(e.message));
  });
  document.getElementById("logout").addEventListener("click", () => { auth.clear(); showLogin(""); });
  window.addEventListener("hashchange", route);
  if (auth.get()) loggedIn().catch((e) => showLogin(e.message));
  else showLogin("");
});
