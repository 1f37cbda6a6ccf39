// The Transportation planner's page: edit the case, save it, solve it, show the plan.
//
// Every URL here is relative: the page lives below the session's base path. Text from
// the data reaches the page only through textContent, input values and attribute
// values, never as HTML.
"use strict";

const state = {
  suppliers: [], // {id, name, amount}: amount as typed (the capacity)
  customers: [], // {id, name, amount}: the demand
  costs: new Map(), // "<supplier id>:<customer id>" -> cost as typed
  result: null, // output case of the last solve
  stale: false, // the data changed since that solve
  edits: 0,
  nextId: 1,
};

const KINDS = {
  suppliers: { label: "Capacity", singular: "Supplier" },
  customers: { label: "Demand", singular: "Customer" },
};

const numbers = new Intl.NumberFormat("en", { maximumFractionDigits: 2 });
const format = (value) => numbers.format(value);
const $ = (id) => document.getElementById(id);

let saveTimer = null;
let saveQueue = Promise.resolve(true);

// --- talking to the server -----------------------------------------------------------

async function api(method, path, body) {
  const options = { method };
  if (method !== "GET") {
    // the server refuses changes not sent as JSON (a forged form post cannot be)
    options.headers = { "Content-Type": "application/json" };
    options.body = body === undefined ? "" : JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not JSON (a proxy's error page): the status says enough
  }
  return { ok: response.ok, status: response.status, data };
}

function errorText(reply) {
  const detail = reply.data && reply.data.error ? reply.data.error : `HTTP ${reply.status}`;
  return `The planner refused: ${detail}`;
}

// Save the case now, after any save already running; resolves to true when it is valid.
function saveNow() {
  clearTimeout(saveTimer);
  saveTimer = null;
  saveQueue = saveQueue.then(save, save);
  return saveQueue;
}

async function save() {
  const reply = await api("PUT", "api/case", toCase());
  if (reply.status === 422 && reply.data) {
    showList("problems", reply.data.problems);
    showList("warnings", []);
    return false;
  }
  if (!reply.ok) {
    setStatus(errorText(reply), true);
    return false;
  }
  showList("problems", []);
  showList("warnings", reply.data.warnings);
  return true;
}

function scheduleSave() {
  clearTimeout(saveTimer);
  saveTimer = setTimeout(() => {
    saveNow().catch((error) => setStatus(`Cannot save: ${error.message}`, true));
  }, 400);
}

// --- the case in the page ------------------------------------------------------------

function setCase(data) {
  state.suppliers = data.suppliers.map((row) => ({
    id: state.nextId++,
    name: row.name,
    amount: String(row.capacity),
  }));
  state.customers = data.customers.map((row) => ({
    id: state.nextId++,
    name: row.name,
    amount: String(row.demand),
  }));
  const supplierIds = new Map(state.suppliers.map((row) => [row.name, row.id]));
  const customerIds = new Map(state.customers.map((row) => [row.name, row.id]));
  state.costs = new Map();
  for (const row of data.costs) {
    const key = `${supplierIds.get(row.from)}:${customerIds.get(row.to)}`;
    state.costs.set(key, String(row.cost));
  }
}

// A blank or unreadable number goes out as null: the server names the field in its answer.
function toNumber(text) {
  const value = Number(text);
  return text.trim() === "" || !Number.isFinite(value) ? null : value;
}

function toCase() {
  const costs = [];
  for (const supplier of state.suppliers) {
    for (const customer of state.customers) {
      const text = state.costs.get(`${supplier.id}:${customer.id}`) ?? "";
      if (text.trim() !== "") {
        costs.push({ from: supplier.name, to: customer.name, cost: toNumber(text) });
      }
    }
  }
  return {
    suppliers: state.suppliers.map((row) => ({ name: row.name, capacity: toNumber(row.amount) })),
    customers: state.customers.map((row) => ({ name: row.name, demand: toNumber(row.amount) })),
    costs,
  };
}

function changed() {
  state.edits += 1;
  setStatus("");
  if (state.result && !state.stale) {
    state.stale = true;
    showStale();
  }
  renderTotals();
  scheduleSave();
}

// --- rendering -----------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function input(type, value, label, onInput) {
  const node = document.createElement("input");
  node.type = type;
  node.value = value;
  node.setAttribute("aria-label", label);
  if (type === "number") {
    node.min = "0";
    node.step = "any";
  }
  node.addEventListener("input", () => onInput(node.value));
  return node;
}

function render() {
  renderParties("suppliers");
  renderParties("customers");
  renderMatrix();
  renderTotals();
}

function renderParties(kind) {
  const { label, singular } = KINDS[kind];
  const body = $(kind).tBodies[0];
  body.replaceChildren();
  for (const row of state[kind]) {
    const amount = input("number", row.amount, "", (value) => {
      row.amount = value;
      changed();
    });
    const remove = el("button", "remove", "×");
    remove.type = "button";
    remove.addEventListener("click", () => {
      state[kind] = state[kind].filter((other) => other !== row);
      render();
      changed();
    });
    const labelRow = () => {
      amount.setAttribute("aria-label", `${label} of ${row.name}`);
      remove.setAttribute("aria-label", `Remove ${row.name}`);
      remove.title = `Remove ${row.name}`;
    };
    labelRow();
    const name = input("text", row.name, `${singular} name`, (value) => {
      row.name = value;
      labelRow();
      renderMatrix();
      changed();
    });

    const tr = document.createElement("tr");
    const cells = [el("td"), el("td", "num"), el("td")];
    cells[0].append(name);
    cells[1].append(amount);
    cells[2].append(remove);
    tr.append(...cells);
    body.append(tr);
  }
}

function addParty(kind) {
  const { singular } = KINDS[kind];
  const names = new Set(state[kind].map((row) => row.name));
  let number = state[kind].length + 1;
  while (names.has(`${singular} ${number}`)) number += 1;
  state[kind].push({ id: state.nextId++, name: `${singular} ${number}`, amount: "0" });
  render();
  changed();
  const inputs = $(kind).tBodies[0].querySelectorAll("input[type=text]");
  inputs[inputs.length - 1].select();
}

function usedRoutes() {
  const used = new Map();
  if (state.result && state.result.status === "optimal") {
    for (const flow of state.result.flows) used.set(`${flow.from}\u0000${flow.to}`, flow.amount);
  }
  return used;
}

function renderMatrix() {
  const table = $("costs");
  const used = usedRoutes();
  const head = document.createElement("thead");
  const headRow = document.createElement("tr");
  headRow.append(el("th", "", "From \\ To"));
  for (const customer of state.customers) headRow.append(el("th", "", customer.name));
  head.append(headRow);

  const body = document.createElement("tbody");
  for (const supplier of state.suppliers) {
    const tr = document.createElement("tr");
    tr.append(el("th", "", supplier.name));
    for (const customer of state.customers) {
      const key = `${supplier.id}:${customer.id}`;
      const cell = el("td");
      const label = `Cost from ${supplier.name} to ${customer.name}`;
      cell.append(
        input("number", state.costs.get(key) ?? "", label, (value) => {
          state.costs.set(key, value);
          changed();
        }),
      );
      const amount = used.get(`${supplier.name}\u0000${customer.name}`);
      if (amount !== undefined) {
        cell.classList.add("used");
        cell.append(el("span", "flow", `ships ${format(amount)}`));
      }
      tr.append(cell);
    }
    body.append(tr);
  }
  table.replaceChildren(head, body);
  table.classList.toggle("is-stale", state.stale);
}

function renderTotals() {
  const capacity = state.suppliers.reduce((sum, row) => sum + (toNumber(row.amount) ?? 0), 0);
  const demand = state.customers.reduce((sum, row) => sum + (toNumber(row.amount) ?? 0), 0);
  const totals = $("totals");
  totals.textContent = `Total capacity ${format(capacity)} · total demand ${format(demand)}`;
  totals.classList.toggle("short", demand > capacity);
}

function showList(id, items) {
  const box = $(id);
  const list = box.querySelector("ul");
  list.replaceChildren(...items.map((item) => el("li", "", item)));
  box.hidden = items.length === 0;
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function showStale() {
  $("stale").hidden = !state.stale;
  $("results").classList.toggle("is-stale", state.stale);
  $("costs").classList.toggle("is-stale", state.stale);
}

function showResult(result, stale) {
  state.result = result;
  state.stale = stale;
  const optimal = result.status === "optimal";
  const badge = $("plan-status");
  badge.textContent = result.status;
  badge.className = `badge ${optimal ? "optimal" : "failed"}`;
  const shipped = result.flows.reduce((sum, flow) => sum + flow.amount, 0);
  $("objective").textContent = optimal ? format(result.objective) : "—";
  $("shipped").textContent = optimal ? format(shipped) : "—";
  $("routes").textContent = optimal ? String(result.flows.length) : "—";
  $("time").textContent =
    result.solve_time_s === null ? "—" : `${format(result.solve_time_s * 1000)} ms`;
  $("messages").replaceChildren(...result.messages.map((text) => el("li", "", text)));

  const flows = $("flows").tBodies[0];
  flows.replaceChildren();
  for (const flow of result.flows) {
    const tr = document.createElement("tr");
    tr.append(
      el("td", "", flow.from),
      el("td", "", flow.to),
      el("td", "num", format(flow.amount)),
      el("td", "num", format(flow.cost)),
    );
    flows.append(tr);
  }

  const duals = $("duals").tBodies[0];
  duals.replaceChildren();
  const sent = new Map();
  const received = new Map();
  for (const flow of result.flows) {
    sent.set(flow.from, (sent.get(flow.from) ?? 0) + flow.amount);
    received.set(flow.to, (received.get(flow.to) ?? 0) + flow.amount);
  }
  const groups = [
    ["suppliers", sent],
    ["customers", received],
  ];
  for (const [kind, totals] of groups) {
    const limits = new Map(state[kind].map((row) => [row.name, toNumber(row.amount)]));
    for (const [name, value] of Object.entries((result.duals || {})[kind] || {})) {
      const limit = limits.get(name);
      const used = format(totals.get(name) ?? 0);
      const tr = document.createElement("tr");
      tr.append(
        el("td", "", `${name} (${KINDS[kind].singular.toLowerCase()})`),
        el("td", "num", limit == null ? used : `${used} / ${format(limit)}`),
        el("td", "num", format(value)),
      );
      duals.append(tr);
    }
  }

  $("plan-details").hidden = !optimal;
  $("results").hidden = false;
  showStale();
  renderMatrix();
}

// --- actions -------------------------------------------------------------------------

async function solve() {
  const button = $("solve");
  button.disabled = true;
  try {
    setStatus("Saving…");
    if (!(await saveNow())) {
      setStatus("Fix the data above, then solve again.", true);
      return;
    }
    const edits = state.edits;
    setStatus("Solving…");
    const reply = await api("POST", "api/solve");
    if (!reply.ok) {
      setStatus(errorText(reply), true);
      return;
    }
    showResult(reply.data, state.edits !== edits);
    if (reply.data.status === "optimal") {
      setStatus(`Optimal plan found: total cost ${format(reply.data.objective)}`);
    } else {
      setStatus(`No plan (${reply.data.status}): see why below.`, true);
    }
  } catch (error) {
    setStatus(`The planner cannot be reached: ${error.message}`, true);
  } finally {
    button.disabled = false;
  }
}

async function reset() {
  clearTimeout(saveTimer);
  const reply = await api("POST", "api/case/reset");
  if (!reply.ok) {
    setStatus(errorText(reply), true);
    return;
  }
  setCase(reply.data);
  state.result = null;
  state.stale = false;
  $("results").hidden = true;
  showList("problems", []);
  showList("warnings", []);
  render();
  setStatus("Back to the example data.");
}

async function load() {
  try {
    const [caseReply, resultReply] = await Promise.all([
      api("GET", "api/case"),
      api("GET", "api/result"),
    ]);
    if (!caseReply.ok) {
      setStatus(errorText(caseReply), true);
      return;
    }
    setCase(caseReply.data);
    render();
    if (resultReply.ok && resultReply.data.result) showResult(resultReply.data.result, false);
  } catch (error) {
    setStatus(`The planner cannot be reached: ${error.message}`, true);
  }
}

$("solve").addEventListener("click", solve);
$("reset").addEventListener("click", () => reset().catch((e) => setStatus(e.message, true)));
$("add-supplier").addEventListener("click", () => addParty("suppliers"));
$("add-customer").addEventListener("click", () => addParty("customers"));
load();
