// The dashboard: the task list and one task, kept live by the /events feed.
import { call, follow } from "./api.js";
import { goSeconds, lang, localTime, setLang, shortDuration, t, translatePage } from "./i18n.js";
import { drawDag } from "./dag.js";

const PAGE = 50;
const $ = (id) => document.getElementById(id);

const ui = {
  wordToKey: new Map(), // state word (either language) -> state key
  keys: [], // state keys in the server's order
  tasks: new Map(), // id -> task entry as GET / lists it, plus `received` (ms) for the ttl
  steps: new Map(), // id -> Map(index -> step) for tasks whose steps are known
  loading: new Set(), // ids whose steps are being fetched
  loaded: false, // the list snapshot is in; feed events before it wait in `early`
  early: [],
  sort: { key: "begin", dir: -1 }, // newest first
  filter: "",
  page: 0,
  view: { kind: "list" },
  detail: null, // { task, steps } of the open task
  detailEarly: [], // feed events of the open task that came while its detail was loading
  selected: null, // the step whose output is shown
  stopLog: () => {},
  renderTimer: null,
};

// -- helpers ------------------------------------------------------------------------------

function make(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

function stateKey(word) { return ui.wordToKey.get(word) || "pending"; }

// A class that says how it went: a stopped step with a non-zero exit or a task with 1002 failed.
function stepClass(step) {
  const key = stateKey(step.state);
  return `st-${key === "stopped" && step.code !== 0 ? "failed" : key}`;
}

function taskClass(task) {
  const key = stateKey(task.state);
  return `st-${key === "stopped" && task.code === 1002 ? "failed" : key}`;
}

function chip(word, cls) { return make("span", { class: `state ${cls}` }, word); }

function ttlLeft(task) {
  const seconds = goSeconds(task.times?.ttl);
  if (seconds === null) return null;
  return seconds - (Date.now() - task.received) / 1000;
}

// Gone for the server once its ttl has run out (it answers 1003 even before the sweep).
function expired(task) {
  const left = ttlLeft(task);
  return left !== null && left <= 0;
}

function seconds(iso) { return iso ? new Date(iso).getTime() / 1000 : null; }

function duration(step) {
  const begin = seconds(step.times?.begin);
  if (begin === null) return "";
  const end = seconds(step.times?.end) ?? Date.now() / 1000;
  return shortDuration(end - begin);
}

function scheduleRender() {
  if (ui.renderTimer) return;
  ui.renderTimer = setTimeout(() => { ui.renderTimer = null; render(); }, 100);
}

// -- the feed -----------------------------------------------------------------------------

function startFeed() {
  follow("/events", {
    onEvent: onFeedEvent,
    onState: (up) => {
      $("live").classList.toggle("off", !up);
      if (up && !ui.loaded) loadList(); // feed first, then the snapshot: nothing falls between
    },
  });
}

function onFeedEvent(event) {
  if (event.event === "reset") {
    ui.loaded = false;
    ui.early = [];
    ui.steps.clear();
    loadList();
    if (ui.view.kind === "task") openTask(ui.view.id);
    return;
  }
  if (event.event !== "task" && event.event !== "step" && event.event !== "delete") return;
  const data = JSON.parse(event.data);
  if (!ui.loaded) { ui.early.push([event.event, data]); return; }
  apply(event.event, data);
  scheduleRender();
}

function apply(kind, data) {
  if (kind === "delete") { // deleted or swept: gone from every open page
    ui.tasks.delete(data.id);
    ui.steps.delete(data.id);
    return;
  }
  if (ui.view.kind === "task" && ui.view.id === data.id && !ui.detail) ui.detailEarly.push([kind, data]);
  if (kind === "task") {
    ui.tasks.set(data.id, { ...data, received: Date.now() });
    if (ui.detail && ui.detail.task.id === data.id) ui.detail.task = { ...ui.detail.task, ...data };
    return;
  }
  const known = ui.steps.get(data.id) || new Map();
  known.set(data.step.step, data.step);
  ui.steps.set(data.id, known);
  if (ui.detail && ui.detail.task.id === data.id) {
    const at = ui.detail.steps.findIndex((s) => s.step === data.step.step);
    if (at >= 0) ui.detail.steps[at] = { ...ui.detail.steps[at], ...data.step };
  }
}

async function loadList() {
  const { status, body } = await call("GET", "/?sort=start");
  if (status !== 200 || !body) return;
  const now = Date.now();
  ui.tasks = new Map(body.data.tasks.map((task) => [task.id, { ...task, received: now }]));
  ui.loaded = true;
  for (const [kind, data] of ui.early.splice(0)) apply(kind, data);
  scheduleRender();
}

async function loadSteps(id) {
  if (ui.loading.has(id) || ui.loading.size >= 4) return;
  ui.loading.add(id);
  try {
    const { status, body } = await call("GET", `/${encodeURIComponent(id)}?detail=true`);
    if (status === 200 && body?.data) ui.steps.set(id, new Map(body.data.steps.map((s) => [s.step, s])));
  } finally {
    ui.loading.delete(id);
    scheduleRender();
  }
}

// -- the list -----------------------------------------------------------------------------

const SORTS = {
  id: (task) => task.id,
  state: (task) => task.state,
  begin: (task) => seconds(task.times?.begin),
  end: (task) => seconds(task.times?.end),
  ttl: (task) => ttlLeft(task),
};

function visibleTasks() {
  const key = SORTS[ui.sort.key];
  const rows = [...ui.tasks.values()].filter((task) => !expired(task) && (!ui.filter || taskClass(task) === `st-${ui.filter}`));
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === y) return 0;
    if (x === null || x === undefined) return 1; // without that time: last, as GET / does
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * ui.sort.dir;
  });
  return rows;
}

function renderCounts() {
  let running = 0, failed = 0;
  for (const task of ui.tasks.values()) {
    if (expired(task)) continue;
    if (stateKey(task.state) === "running") running += 1;
    if (task.code === 1002) failed += 1;
  }
  $("counts").replaceChildren(
    make("span", { class: "counts-chip", id: "running-count" }, t("running_count", { n: running })),
    make("span", { class: "counts-chip", id: "failed-count" }, t("failed_count", { n: failed })),
  );
}

function stepCounts(task) {
  const known = ui.steps.get(task.id);
  if (!known || known.size < task.count) {
    loadSteps(task.id);
    return `${task.count}`;
  }
  const byState = new Map();
  for (const step of known.values()) {
    const word = stepClass(step) === "st-failed" ? t("failed") : step.state; // a non-zero exit counts as failed
    byState.set(word, (byState.get(word) || 0) + 1);
  }
  return [...byState].map(([word, n]) => `${word} ${n}`).join(" · ");
}

function renderList() {
  const rows = visibleTasks();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  ui.page = Math.min(ui.page, pages - 1);
  const body = $("tasks").tBodies[0];
  body.replaceChildren(...rows.slice(ui.page * PAGE, (ui.page + 1) * PAGE).map((task) => {
    const tr = make("tr", { class: "clickable", "data-id": task.id });
    const link = make("a", { href: `/ui/tasks/${encodeURIComponent(task.id)}` }, task.id);
    const cells = [link, chip(task.state, taskClass(task)), stepCounts(task), localTime(task.times?.begin),
      localTime(task.times?.end), shortDuration(ttlLeft(task))];
    for (const cell of cells) {
      const td = make("td");
      td.append(cell);
      tr.append(td);
    }
    tr.addEventListener("click", (e) => { e.preventDefault(); go(`/ui/tasks/${encodeURIComponent(task.id)}`); });
    return tr;
  }));
  $("page-info").textContent = t("page", { page: ui.page + 1, pages, total: rows.length });
  $("prev-page").disabled = ui.page === 0;
  $("next-page").disabled = ui.page >= pages - 1;
  for (const th of document.querySelectorAll("#tasks th[data-sort]")) {
    th.classList.toggle("asc", th.dataset.sort === ui.sort.key && ui.sort.dir === 1);
    th.classList.toggle("desc", th.dataset.sort === ui.sort.key && ui.sort.dir === -1);
  }
}

function fillStateFilter() {
  const select = $("state-filter");
  const options = [make("option", { value: "" }, t("all"))];
  const keys = [...ui.keys, "failed"];
  for (const key of keys) {
    const word = key === "failed" ? t("failed") : ui.vocabulary[key][lang() === "en" ? 1 : 0];
    options.push(make("option", { value: key }, word));
  }
  select.replaceChildren(...options);
  select.value = ui.filter;
}

// -- one task -----------------------------------------------------------------------------

async function openTask(id) {
  ui.detailEarly = [];
  const { status, body } = await call("GET", `/${encodeURIComponent(id)}?detail=true`);
  if (ui.view.kind !== "task" || ui.view.id !== id) return;
  if (status !== 200 || !body?.data) {
    ui.detail = null;
    $("task-title").textContent = id;
    $("task-meta").textContent = body?.message || t("not_found");
    render();
    return;
  }
  ui.detail = body.data;
  ui.steps.set(id, new Map(body.data.steps.map((s) => [s.step, s])));
  for (const [kind, data] of ui.detailEarly.splice(0)) apply(kind, data); // newer than or as new as the load
  if (ui.selected === null || !ui.detail.steps.some((s) => s.step === ui.selected)) {
    const pick = ui.detail.steps.find((s) => stateKey(s.state) === "running")
      || ui.detail.steps.find((s) => stepClass(s) === "st-failed") || ui.detail.steps[0];
    selectStep(pick ? pick.step : null);
  }
  render();
}

function selectStep(index) {
  ui.stopLog();
  ui.selected = index;
  $("log").textContent = "";
  $("log-notice").textContent = "";
  const step = ui.detail?.steps.find((s) => s.step === index);
  $("log-step").textContent = step ? step.name : "";
  if (!step) return;
  let ended = false;
  const path = `/${encodeURIComponent(ui.detail.task.id)}/${index}/log?follow=true`;
  ui.stopLog = follow(path, {
    onState: (up) => $("log-state").classList.toggle("off", !up),
    until: () => ended,
    onEvent: (event) => {
      if (event.event === "notice") $("log-notice").textContent = event.data;
      else if (event.event === "end") ended = true;
      else if (event.event === "message") $("log").append(event.data);
    },
  });
  scheduleRender();
}

async function act(action, step = null) {
  const id = ui.detail.task.id;
  const path = `/${encodeURIComponent(id)}${step === null ? "" : `/${step}`}`;
  const answer = action === "delete" ? await call("DELETE", path) : await call("PUT", `${path}?action=${action}`);
  const text = answer.body?.message ?? `HTTP ${answer.status}`;
  const shown = $("action-answer");
  shown.className = `answer ${answer.status === 200 ? "ok" : "error"}`;
  shown.textContent = answer.status === 200 ? `${t(action)}: ${text}` : `${t(action)}: ${answer.status} ${text}`;
  if (action === "delete" && answer.status === 200) ui.tasks.delete(id);
}

function renderTask() {
  const detail = ui.detail;
  for (const button of document.querySelectorAll("#task-view .actions button")) button.disabled = !detail;
  if (!detail) { $("task-state").replaceChildren(); $("steps").tBodies[0].replaceChildren(); $("dag").replaceChildren(); return; }
  const task = detail.task;
  $("task-title").textContent = task.id;
  $("task-state").replaceChildren(chip(task.state, taskClass(task)));
  $("task-meta").textContent = [`${t("mode_word")}: ${t(task.mode)}`, `${t("begin")}: ${localTime(task.times?.begin)}`,
    `${t("end")}: ${localTime(task.times?.end)}`, task.message].join(" · ");
  drawDag($("dag"), detail.steps, task.mode, stepClass, selectStep, ui.selected);
  const body = $("steps").tBodies[0];
  if (body.dataset.task !== task.id || body.rows.length !== detail.steps.length) {
    body.dataset.task = task.id;
    body.replaceChildren(...detail.steps.map(stepRow));
  }
  detail.steps.forEach((step, at) => fillStepRow(body.rows[at], step));
}

// A step's row is made once and then updated in place, so a click never lands on a row being replaced.
function stepRow(step) {
  const tr = make("tr", { class: "clickable", "data-step": step.step });
  for (let i = 0; i < 5; i++) tr.append(make("td"));
  const actions = make("td");
  for (const action of ["kill", "pause", "resume"]) {
    const button = make("button", { type: "button", "data-step-action": action }, t(action));
    button.addEventListener("click", (e) => { e.stopPropagation(); act(action, step.step); });
    actions.append(button);
  }
  tr.append(actions);
  tr.addEventListener("click", () => selectStep(step.step));
  return tr;
}

function fillStepRow(tr, step) {
  const key = stateKey(step.state);
  const finished = !["running", "pending", "paused"].includes(key);
  tr.classList.toggle("selected", step.step === ui.selected);
  const cells = [String(step.step), step.name, chip(step.state, stepClass(step)), finished ? String(step.code) : "", duration(step)];
  cells.forEach((cell, i) => {
    const td = tr.cells[i];
    if (typeof cell === "string") { if (td.textContent !== cell) td.textContent = cell; }
    else if (td.textContent !== cell.textContent || td.firstChild?.className !== cell.className) td.replaceChildren(cell);
  });
}

// -- pages and wiring ---------------------------------------------------------------------

function render() {
  renderCounts();
  $("list-view").hidden = ui.view.kind !== "list";
  $("task-view").hidden = ui.view.kind !== "task";
  if (ui.view.kind === "list") renderList();
  else renderTask();
}

function route() {
  const match = location.pathname.match(/^\/ui\/tasks\/([^/]+)$/);
  ui.stopLog();
  ui.selected = null;
  ui.detail = null;
  $("action-answer").textContent = "";
  $("log").textContent = "";
  if (match) {
    ui.view = { kind: "task", id: decodeURIComponent(match[1]) };
    openTask(ui.view.id);
  } else {
    ui.view = { kind: "list" };
  }
  render();
}

function go(path) {
  history.pushState(null, "", path);
  route();
}

async function submit(event) {
  event.preventDefault();
  const mode = $("submit-mode").value;
  const params = new URLSearchParams();
  if (mode !== "sequential") params.set("async", "true"); // any depends_on makes it a DAG
  if ($("submit-id").value.trim()) params.set("id", $("submit-id").value.trim());
  const query = params.toString() ? `?${params}` : "";
  const { status, body } = await call("POST", `/${query}`, $("submit-steps").value);
  const shown = $("submit-answer");
  if (status === 200 && body?.data) {
    shown.className = "answer ok";
    shown.textContent = `${body.message}: ${body.data.id}`;
    go(`/ui/tasks/${encodeURIComponent(body.data.id)}`);
  } else {
    shown.className = "answer error";
    shown.textContent = `${status}: ${body?.message ?? ""}`;
  }
}

function wire() {
  $("lang-toggle").addEventListener("click", () => { setLang(lang() === "en" ? "zh" : "en"); location.reload(); });
  $("home").addEventListener("click", (e) => { e.preventDefault(); go("/ui/"); });
  $("state-filter").addEventListener("change", (e) => { ui.filter = e.target.value; ui.page = 0; render(); });
  $("prev-page").addEventListener("click", () => { ui.page -= 1; render(); });
  $("next-page").addEventListener("click", () => { ui.page += 1; render(); });
  for (const th of document.querySelectorAll("#tasks th[data-sort]")) {
    th.addEventListener("click", () => {
      ui.sort = { key: th.dataset.sort, dir: ui.sort.key === th.dataset.sort ? -ui.sort.dir : 1 };
      render();
    });
  }
  for (const button of document.querySelectorAll("#task-view .actions button")) {
    button.addEventListener("click", () => act(button.dataset.action));
  }
  $("submit-form").addEventListener("submit", submit);
  window.addEventListener("popstate", route);
  setInterval(() => { // a running step's duration
    if (ui.view.kind === "task" && ui.detail?.steps.some((s) => stateKey(s.state) === "running")) scheduleRender();
  }, 1000);
}

async function main() {
  translatePage();
  $("lang-toggle").textContent = lang() === "en" ? "中文" : "English";
  $("submit-steps").placeholder = t("steps_placeholder");
  const vocabulary = (await call("GET", "/ui/vocabulary.json")).body;
  ui.vocabulary = vocabulary.states;
  ui.keys = Object.keys(vocabulary.states);
  for (const [key, words] of Object.entries(vocabulary.states)) for (const word of words) ui.wordToKey.set(word, key);
  fillStateFilter();
  wire();
  route();
  startFeed();
}

main();
