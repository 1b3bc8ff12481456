// The admin page: polls GET admin/state once a second and keeps the tables
// in step with it. Rows are keyed (route id, upstream and instance, filter)
// and updated in place, so a tooltip being read or a row being selected
// survives the next refresh. Every value from the gateway is written with
// textContent or as an attribute value, never parsed as HTML: route ids,
// file names and reload errors come from configuration files.
"use strict";

const STATE_URL = "admin/state";
const POLL_MS = 1000;
// A fetch slower than this counts as a failure, so a hung connection
// shows "disconnected" instead of freezing the page on old numbers.
const FETCH_TIMEOUT_MS = 3000;
const WINDOW_SECONDS = 60;
const DASH = "–";
// Lines of a reload's changes shown before the rest are folded away.
const MAX_CHANGES = 4;

let updates = 0;

// ---- formatting -----------------------------------------------------------

function isNumber(v) {
  return typeof v === "number" && Number.isFinite(v);
}

function text(v) {
  return v === null || v === undefined || v === "" ? DASH : String(v);
}

// Fewer decimals as numbers grow: 0.84, 12.3, 120.
function number(v) {
  if (!isNumber(v)) return DASH;
  const a = Math.abs(v);
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function percent(fraction) {
  if (!isNumber(fraction)) return DASH;
  const p = fraction * 100;
  return (p === 0 || p >= 10 ? p.toFixed(1) : p.toFixed(2)) + "%";
}

function duration(seconds) {
  if (!isNumber(seconds)) return DASH;
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

function ago(seconds) {
  return isNumber(seconds) ? `${duration(seconds)} ago` : DASH;
}

// ---- DOM helpers ----------------------------------------------------------

function setText(node, value) {
  if (node.textContent !== value) node.textContent = value;
}

function setTitle(node, title) {
  if (title) {
    if (node.title !== title) node.title = title;
  } else if (node.hasAttribute("title")) {
    node.removeAttribute("title");
  }
}

// Sets the state classes of `node` (from `all`) to `on` only.
function setClass(node, all, on) {
  for (const c of all) node.classList.toggle(c, c === on);
}

function badge(td, label, tone) {
  let span = td.firstElementChild;
  if (!span || span.tagName !== "SPAN") {
    td.replaceChildren();
    span = document.createElement("span");
    td.append(span);
  }
  span.className = tone ? `badge ${tone}` : "";
  setText(span, label);
}

// Replaces the children of `parent` with one `tag` element per item, only
// when the items differ from what is shown.
function setItems(parent, tag, items) {
  const shown = Array.from(parent.children, (c) => c.textContent);
  if (shown.length === items.length && shown.every((t, i) => t === items[i])) return;
  parent.replaceChildren(
    ...items.map((item) => {
      const node = document.createElement(tag);
      node.textContent = item;
      return node;
    }),
  );
}

// Brings the rows of `section`'s table in step with `items`: `key(item)`
// names a row, `attrs(item)` gives its data-* attributes (set once, when
// the row is made), and each column's `fill(td, item)` writes a cell whose
// class is the column's `cls`.
function syncRows(section, items, key, attrs, columns) {
  const tbody = section.querySelector("tbody");
  const old = new Map();
  for (const tr of tbody.rows) old.set(tr.dataset.key, tr);
  const used = new Set();
  items.forEach((item, i) => {
    let k = key(item);
    // Two rows with the same key (an address listed twice) stay apart.
    for (let n = 2; used.has(k); n++) k = `${key(item)}#${n}`;
    used.add(k);
    let tr = old.get(k);
    if (tr) {
      old.delete(k);
    } else {
      tr = document.createElement("tr");
      tr.dataset.key = k;
      for (const [name, value] of Object.entries(attrs(item))) tr.dataset[name] = value;
      for (const col of columns) {
        const td = document.createElement("td");
        td.className = col.cls;
        tr.append(td);
      }
    }
    // In place before it is filled: a canvas has no size until then.
    if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
    columns.forEach((col, c) => col.fill(tr.cells[c], item));
  });
  for (const tr of old.values()) tr.remove();
  section.querySelector(".empty").classList.toggle("hidden", items.length > 0);
}

const cell = (cls, value) => ({ cls, fill: (td, item) => setText(td, value(item)) });

// ---- sparklines -----------------------------------------------------------

function cssColour(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

// Draws `field` of `points` (each with `seconds_ago`) over the last
// WINDOW_SECONDS, newest at the right, scaled to the largest value shown.
function sparkline(canvas, points, field, colour, unit) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(canvas.clientWidth * dpr);
  const h = Math.round(canvas.clientHeight * dpr);
  if (w === 0 || h === 0) return;
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);

  const shown = points
    .filter((p) => isNumber(p.seconds_ago) && p.seconds_ago <= WINDOW_SECONDS)
    .sort((a, b) => b.seconds_ago - a.seconds_ago);
  const values = shown.map((p) => p[field]).filter(isNumber);
  const max = values.length > 0 ? Math.max(...values) : 0;
  const last = shown.length > 0 ? shown[shown.length - 1][field] : null;
  canvas.title = `max ${number(max)} ${unit}, last ${number(last)} ${unit} (last ${WINDOW_SECONDS} s)`;
  canvas.setAttribute("aria-label", canvas.title);

  const pad = 2 * dpr;
  const x = (p) => (1 - p.seconds_ago / WINDOW_SECONDS) * (w - 2 * pad) + pad;
  const y = (v) => h - pad - (max > 0 ? v / max : 0) * (h - 2 * pad);

  // The zero line, so an idle route reads as zero rather than as empty.
  ctx.strokeStyle = cssColour("--line");
  ctx.lineWidth = dpr;
  ctx.beginPath();
  ctx.moveTo(pad, h - pad);
  ctx.lineTo(w - pad, h - pad);
  ctx.stroke();

  ctx.strokeStyle = colour;
  ctx.fillStyle = colour;
  ctx.lineWidth = 1.5 * dpr;
  ctx.lineJoin = "round";
  ctx.beginPath();
  let drawing = false;
  for (const p of shown) {
    const v = p[field];
    if (!isNumber(v)) {
      drawing = false; // unknown: a gap, not a zero
      continue;
    }
    if (drawing) ctx.lineTo(x(p), y(v));
    else ctx.moveTo(x(p), y(v));
    drawing = true;
  }
  ctx.stroke();
  if (shown.length > 0 && isNumber(last)) {
    const p = shown[shown.length - 1];
    ctx.beginPath();
    ctx.arc(x(p), y(last), 2 * dpr, 0, 2 * Math.PI);
    ctx.fill();
  }
}

// ---- sections -------------------------------------------------------------

function renderHeader(state) {
  setText(document.getElementById("version"), text(state.version));
  setText(document.getElementById("generation"), text(state.generation));
  setText(document.getElementById("uptime"), duration(state.uptime_seconds));
  const required = state.admin ? state.admin.token_required : null;
  setText(
    document.getElementById("token"),
    required === true ? "required for changes" : required === false ? "not required" : DASH,
  );
}

// The newest point of a route's series: what its numbers show now.
function newest(points) {
  let best = null;
  for (const p of points) {
    if (isNumber(p.seconds_ago) && (best === null || p.seconds_ago < best.seconds_ago)) best = p;
  }
  return best || {};
}

function renderLive(state, routes) {
  const live = state.live || {};
  const series = new Map();
  for (const r of live.routes || []) series.set(r.route, r.points || []);
  // Every configured route has a row, in configuration order, traffic or not.
  const ids = routes.map((r) => r.id);
  for (const id of series.keys()) if (!ids.includes(id)) ids.push(id);
  const rows = ids.map((id) => {
    const points = series.get(id) || [];
    return { id, points, now: newest(points) };
  });
  const rate = cssColour("--rate");
  const p99 = cssColour("--p99");
  syncRows(
    document.getElementById("live"),
    rows,
    (r) => r.id,
    (r) => ({ route: r.id }),
    [
      cell("route mono", (r) => r.id),
      cell("rate num", (r) => number(r.now.rate)),
      cell("p50 num", (r) => number(r.now.p50_ms)),
      cell("p99 num", (r) => number(r.now.p99_ms)),
      {
        cls: "errors num",
        fill: (td, r) => {
          setText(td, percent(r.now.error_rate));
          td.classList.toggle("bad", isNumber(r.now.error_rate) && r.now.error_rate > 0);
        },
      },
      { cls: "spark-rate", fill: (td, r) => sparkline(canvasIn(td), r.points, "rate", rate, "req/s") },
      { cls: "spark-p99", fill: (td, r) => sparkline(canvasIn(td), r.points, "p99_ms", p99, "ms") },
    ],
  );
  setText(
    document.getElementById("live-note"),
    isNumber(live.interval_seconds) ? `(a point every ${live.interval_seconds} s)` : "",
  );
}

function canvasIn(td) {
  let canvas = td.firstElementChild;
  if (!canvas) {
    canvas = document.createElement("canvas");
    canvas.className = "spark";
    td.append(canvas);
  }
  return canvas;
}

function renderRoutes(routes) {
  syncRows(
    document.getElementById("routes"),
    routes,
    (r) => r.id,
    (r) => ({ route: r.id }),
    [
      cell("id mono", (r) => text(r.id)),
      cell("hosts mono", (r) => (Array.isArray(r.hosts) && r.hosts.length > 0 ? r.hosts.join(", ") : "any")),
      cell("prefix mono", (r) => text(r.path_prefix)),
      cell("methods", (r) => (Array.isArray(r.methods) && r.methods.length > 0 ? r.methods.join(" ") : "any")),
      cell("upstream mono", (r) => text(r.upstream)),
      {
        cls: "filters",
        fill: (td, r) => {
          const filters = Array.isArray(r.filters) ? r.filters : [];
          if (filters.length === 0) {
            setText(td, "none");
            td.classList.add("muted");
            return;
          }
          td.classList.remove("muted");
          let ol = td.firstElementChild;
          if (!ol) {
            td.replaceChildren();
            ol = document.createElement("ol");
            ol.className = "chain";
            td.append(ol);
          }
          setItems(ol, "li", filters.map(String));
        },
      },
    ],
  );
}

function renderTcpRoutes(routes) {
  syncRows(
    document.getElementById("tcp-routes"),
    routes,
    (r) => `${text(r.listen)}\u0000${text(r.id)}`,
    (r) => ({ route: text(r.id) }),
    [
      cell("id mono", (r) => text(r.id)),
      cell("listen mono", (r) => text(r.listen)),
      cell("sni mono", (r) => {
        if (Array.isArray(r.sni) && r.sni.length > 0) return r.sni.join(", ");
        // The default takes the names no other route on its listener does.
        return r.default === true ? "any other" : "any";
      }),
      cell("upstream mono", (r) => text(r.upstream)),
      cell("proxy-protocol", (r) => (r.proxy_protocol ? r.proxy_protocol : "none")),
      cell("open num", (r) => `${text(r.open)} / ${text(r.max_connections)}`),
    ],
  );
}

const BREAKER_STATES = ["closed", "open", "half-open"];

function renderUpstreams(state) {
  const rows = [];
  for (const u of state.upstreams || []) {
    (u.instances || []).forEach((instance, i) => rows.push({ upstream: u, first: i === 0, instance }));
  }
  syncRows(
    document.getElementById("upstreams"),
    rows,
    (r) => `${r.upstream.name}\u0000${r.instance.address}`,
    (r) => ({ upstream: text(r.upstream.name), instance: text(r.instance.address) }),
    [
      {
        cls: "name",
        fill: (td, r) => {
          // The name once per upstream; its balancer beside it.
          setText(td, r.first ? `${text(r.upstream.name)} · ${text(r.upstream.balancer)}` : "");
        },
      },
      {
        cls: "address",
        fill: (td, r) => {
          setText(td, text(r.instance.address));
          setTitle(td, isNumber(r.instance.weight) ? `weight ${r.instance.weight}` : "");
        },
      },
      {
        cls: "health",
        fill: (td, r) => {
          const i = r.instance;
          if (i.healthy === false) badge(td, "unhealthy", "bad");
          else if (i.healthy === true && i.health_checked) badge(td, "healthy", "good");
          else if (i.healthy === true) badge(td, "not checked", "");
          else badge(td, DASH, "");
          setTitle(td, i.healthy === true && !i.health_checked ? "no active health checks: counted healthy" : "");
        },
      },
      {
        cls: "breaker",
        fill: (td, r) => {
          const b = r.instance.breaker || {};
          const label = typeof b.state === "string" ? b.state.replace("_", "-") : DASH;
          setText(td, label);
          setClass(td, BREAKER_STATES, label);
          setTitle(td, b.reason ? `${b.reason} (${duration(b.since_seconds)} ago)` : "");
        },
      },
      cell("breaker-detail", (r) => {
        const b = r.instance.breaker || {};
        const since = isNumber(b.since_seconds) ? `for ${duration(b.since_seconds)}` : "";
        return [b.reason, since].filter(Boolean).join(" · ") || DASH;
      }),
      {
        cls: "ejected",
        fill: (td, r) => {
          const e = r.instance.ejected;
          badge(td, e === true ? "ejected" : e === false ? "no" : DASH, e === true ? "bad" : "");
        },
      },
      {
        cls: "in-flight num",
        fill: (td, r) => {
          const i = r.instance;
          let label = td.firstChild;
          if (!label || label.nodeType !== Node.TEXT_NODE) {
            td.replaceChildren();
            label = document.createTextNode("");
            td.append(label);
          }
          const value = `${text(i.in_flight)} / ${i.max_connections === null ? "∞" : text(i.max_connections)}`;
          if (label.data !== value) label.data = value;
          let meter = td.querySelector("meter");
          if (isNumber(i.max_connections) && i.max_connections > 0 && isNumber(i.in_flight)) {
            if (!meter) {
              meter = document.createElement("meter");
              meter.min = 0;
              td.append(meter);
            }
            meter.max = i.max_connections;
            meter.high = i.max_connections * 0.8;
            meter.value = i.in_flight;
          } else if (meter) {
            meter.remove();
          }
        },
      },
      {
        cls: "pool num",
        fill: (td, r) => {
          const p = r.instance.pool || {};
          setText(td, `${text(p.idle)} / ${text(p.max_idle)}`);
          setTitle(td, isNumber(p.open) ? `${p.open} open connection${p.open === 1 ? "" : "s"}` : "");
        },
      },
    ],
  );
}

function renderPlugins(state) {
  syncRows(
    document.getElementById("plugins"),
    state.plugins || [],
    (p) => text(p.filter),
    (p) => ({ filter: text(p.filter) }),
    [
      cell("filter mono", (p) => text(p.filter)),
      cell("plugin mono", (p) => text(p.plugin)),
      {
        cls: "hash",
        fill: (td, p) => {
          setText(td, typeof p.sha256 === "string" && p.sha256 ? p.sha256.slice(0, 12) : DASH);
          setTitle(td, p.sha256 || "");
        },
      },
      cell("wit", (p) => text(p.wit)),
      cell("calls num", (p) => text(p.calls)),
      {
        cls: "failures num",
        fill: (td, p) => {
          setText(td, text(p.failures));
          td.classList.toggle("bad", isNumber(p.failures) && p.failures > 0);
        },
      },
      {
        cls: "crash-loop",
        fill: (td, p) => {
          const c = p.crash_loop;
          badge(td, c === true ? "crash loop" : c === false ? "no" : DASH, c === true ? "bad" : "");
        },
      },
      cell("loaded num", (p) => ago(p.loaded_seconds_ago)),
    ],
  );
}

function renderReloads(state) {
  const reloads = (state.reloads || []).slice().sort((a, b) => (a.seconds_ago ?? 0) - (b.seconds_ago ?? 0));
  // A reload's moment stays put while `seconds_ago` grows: its wall-clock
  // time when given, else its moment in process time.
  const at = (r) =>
    r.at ??
    (isNumber(state.uptime_seconds) && isNumber(r.seconds_ago) ? Math.round(state.uptime_seconds - r.seconds_ago) : "");
  syncRows(
    document.getElementById("reloads"),
    reloads,
    (r) => `${at(r)}|${r.trigger}|${r.result}|${r.generation}`,
    (r) => ({ result: text(r.result) }),
    [
      {
        cls: "when num",
        fill: (td, r) => {
          setText(td, ago(r.seconds_ago));
          const took = isNumber(r.took_ms) ? `took ${number(r.took_ms)} ms` : "";
          setTitle(td, [r.at, took].filter(Boolean).join(", "));
        },
      },
      cell("trigger", (r) => text(r.trigger)),
      {
        cls: "result",
        fill: (td, r) => {
          const tone = r.result === "success" ? "good" : r.result === "failure" ? "bad" : "";
          badge(td, text(r.result), tone);
        },
      },
      cell("generation num", (r) => text(r.generation)),
      {
        cls: "detail wrap",
        fill: (td, r) => {
          const failed = r.error !== null && r.error !== undefined && r.error !== "";
          td.classList.toggle("error", failed);
          if (failed) {
            setText(td, String(r.error));
            return;
          }
          const changes = Array.isArray(r.changes) ? r.changes.map(String) : [];
          if (changes.length === 0) {
            setText(td, r.trigger === "start" ? "started" : "nothing changed");
            return;
          }
          let ul = td.firstElementChild;
          if (!ul || ul.tagName !== "UL") {
            td.replaceChildren();
            ul = document.createElement("ul");
            ul.className = "changes";
            td.append(ul);
          }
          // A start lists every route; a long list is cut, in full on hover.
          const shown =
            changes.length > MAX_CHANGES
              ? [...changes.slice(0, MAX_CHANGES - 1), `… and ${changes.length - MAX_CHANGES + 1} more`]
              : changes;
          setItems(ul, "li", shown);
          setTitle(ul, changes.length > MAX_CHANGES ? changes.join("\n") : "");
        },
      },
    ],
  );
}

function render(state) {
  const routes = Array.isArray(state.routes) ? state.routes : [];
  renderHeader(state);
  renderLive(state, routes);
  renderRoutes(routes);
  renderTcpRoutes(Array.isArray(state.tcp_routes) ? state.tcp_routes : []);
  renderUpstreams(state);
  renderPlugins(state);
  renderReloads(state);
}

// ---- polling --------------------------------------------------------------

function setStatus(kind, detail) {
  const status = document.getElementById("status");
  setClass(status, ["live", "disconnected", "connecting"], kind);
  setText(document.getElementById("status-text"), detail ? `${kind} (${detail})` : kind);
  document.body.classList.toggle("stale", kind !== "live");
}

async function poll() {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
  let state;
  try {
    const resp = await fetch(STATE_URL, {
      cache: "no-store",
      headers: { accept: "application/json" },
      signal: abort.signal,
    });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    state = await resp.json();
  } catch (e) {
    setStatus("disconnected", e.name === "AbortError" ? "timed out" : e.message);
    state = null;
  } finally {
    clearTimeout(timer);
  }
  if (state !== null) {
    try {
      render(state);
      updates += 1;
      document.body.dataset.updates = String(updates);
      setStatus("live");
    } catch (e) {
      // A state this page cannot show is the page's bug: said on the page
      // and in the console, and the next poll tries again.
      setStatus("disconnected", `cannot show this state: ${e.message}`);
      console.error("rendering /admin/state failed", e);
    }
  }
  setTimeout(poll, POLL_MS);
}

poll();
