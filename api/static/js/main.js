// The review page's shell: hash routes, the navigation, the current audit and the API key.

import { api, apiKey, onKeyNeeded } from "./api.js";
import { renderBlocks } from "./blocks.js";
import { renderDatasets } from "./datasets.js";
import { errorBox, h } from "./dom.js";
import { renderDuplicates } from "./duplicates.js";
import { renderFindings } from "./findings.js";
import { renderTables } from "./tables.js";

const PAGES = {
  datasets: renderDatasets,
  findings: renderFindings,
  duplicates: renderDuplicates,
  blocks: renderBlocks,
  tables: renderTables,
};
const LAST_AUDIT = "auditor.audit";
let cleanup = null;

const lastAudit = () => Number(sessionStorage.getItem(LAST_AUDIT)) || null;

/** `#/datasets` or `#/audits/{id}/{page}?filters`. */
function parseHash() {
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "audits" && /^\d+$/.test(parts[1] ?? "")) {
    const page = PAGES[parts[2]] && parts[2] !== "datasets" ? parts[2] : "findings";
    return { page, auditId: Number(parts[1]), params: new URLSearchParams(query) };
  }
  return { page: "datasets", auditId: null, params: new URLSearchParams(query) };
}

function updateNav(route) {
  const auditId = route.auditId ?? lastAudit();
  for (const link of document.querySelectorAll("#nav a")) {
    const page = link.dataset.page;
    if (page !== "datasets") {
      if (auditId) {
        link.href = `#/audits/${auditId}/${page}`;
        link.removeAttribute("aria-disabled");
      } else {
        link.removeAttribute("href");
        link.setAttribute("aria-disabled", "true");
        link.title = "Open an audit first";
      }
    }
    if (page === route.page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function showAuditBadge(auditId) {
  const badge = document.getElementById("audit-badge");
  if (!auditId) {
    badge.textContent = "";
    return;
  }
  try {
    const audit = await api(`/audits/${auditId}`);
    const dataset = await api(`/datasets/${audit.dataset_id}`);
    badge.textContent = `${dataset.name} · audit #${audit.id} · ${audit.status}`;
  } catch {
    badge.textContent = `audit #${auditId}`;
  }
}

async function route() {
  cleanup?.();
  cleanup = null;
  const current = parseHash();
  if (current.auditId) sessionStorage.setItem(LAST_AUDIT, String(current.auditId));
  updateNav(current);
  const main = document.getElementById("main");
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  showAuditBadge(current.auditId ?? lastAudit());
  try {
    cleanup = (await PAGES[current.page](main, current)) ?? null;
  } catch (error) {
    main.replaceChildren(errorBox(error));
  }
}

function setUpKeyDialog() {
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  const reason = document.getElementById("key-reason");
  const defaultReason = reason.textContent;
  // Requests that meet a 401 while the dialog is open share its answer.
  let pending = null;
  let resolve = null;
  const ask = (why) => {
    if (pending) return pending;
    pending = new Promise((done) => (resolve = done));
    reason.textContent = why ?? defaultReason;
    input.value = "";
    dialog.showModal();
    input.focus();
    return pending;
  };
  dialog.addEventListener("close", () => {
    const key = input.value.trim();
    const saved = dialog.returnValue === "save" && Boolean(key);
    if (saved) apiKey.set(key);
    resolve?.(saved);
    pending = resolve = null;
    dialog.returnValue = "";
  });
  document.getElementById("key-clear").addEventListener("click", () => {
    apiKey.clear();
    dialog.close();
  });
  document.getElementById("key-button").addEventListener("click", async () => {
    if (await ask()) route();
  });
  onKeyNeeded(ask);
}

setUpKeyDialog();
window.addEventListener("hashchange", route);
if (!location.hash) history.replaceState(null, "", "#/datasets");
route();
