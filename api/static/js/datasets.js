// Page 1: datasets and their audits, with live progress of queued and running audits.

import { api } from "./api.js";
import { errorBox, fill, h, notify } from "./dom.js";

const POLL_MS = 2000;
const ACTIVE = new Set(["queued", "running"]);

function findingSummary(findings) {
  const entries = Object.entries(findings ?? {}).filter(([, count]) => count > 0);
  if (!entries.length) return h("span", { class: "muted" }, "none");
  return h(
    "ul",
    { class: "chips" },
    entries.map(([kind, count]) => h("li", {}, `${kind.replaceAll("_", " ")} `, h("b", {}, count))),
  );
}

function auditCells(audit) {
  const progress = Math.round((audit.progress ?? 0) * 100);
  const stage = audit.status === "running" && audit.stage ? ` · ${audit.stage}` : "";
  return [
    h("td", {}, `#${audit.id}`),
    h(
      "td",
      {},
      h("span", { class: `status status-${audit.status}` }, audit.status),
      stage,
      audit.error ? h("div", { class: "error-text" }, audit.error) : null,
    ),
    h(
      "td",
      { class: "progress-cell" },
      h("progress", { max: 100, value: progress, "aria-label": `Audit ${audit.id} progress` }),
      ` ${progress} %`,
    ),
    h("td", {}, findingSummary(audit.findings)),
    h("td", {}, audit.created_at ? new Date(audit.created_at).toLocaleString() : "–"),
    h(
      "td",
      { class: "links" },
      audit.status === "completed"
        ? [
            h("a", { href: `#/audits/${audit.id}/findings` }, "Review findings"),
            h("a", { href: `#/audits/${audit.id}/blocks` }, "Blocks"),
          ]
        : h("span", { class: "muted" }, "available when completed"),
    ),
  ];
}

function auditTable(audits, rows) {
  if (!audits.length) return h("p", { class: "muted" }, "No audits yet.");
  return h(
    "table",
    {},
    h(
      "thead",
      {},
      h("tr", {}, ["Audit", "Status", "Progress", "Issues found", "Started", ""].map((t) => h("th", { scope: "col" }, t))),
    ),
    h(
      "tbody",
      {},
      audits.map((audit) => {
        const row = h("tr", { "data-audit": audit.id }, auditCells(audit));
        rows.set(audit.id, row);
        return row;
      }),
    ),
  );
}

export async function renderDatasets(main) {
  const { items } = await api("/datasets");
  const rows = new Map(); // audit id -> <tr>
  const active = new Set();
  const sections = [];
  for (const dataset of items) {
    let audits = [];
    let problem = null;
    try {
      audits = (await api(`/datasets/${dataset.id}/audits`)).items;
    } catch (error) {
      problem = errorBox(error);
    }
    audits.filter((a) => ACTIVE.has(a.status)).forEach((a) => active.add(a.id));
    const tableHolder = h("div", {}, problem ?? auditTable(audits, rows));
    const start = h("button", { type: "button", class: "primary" }, "Start audit");
    start.addEventListener("click", async () => {
      start.disabled = true;
      try {
        const audit = await api(`/datasets/${dataset.id}/audits`, { method: "POST", body: { parameters: {} } });
        audits = [audit, ...audits];
        fill(tableHolder, auditTable(audits, rows));
        active.add(audit.id);
        notify(`Audit #${audit.id} queued`);
      } catch (error) {
        notify(`Could not start an audit: ${error.message}`, { error: true });
      } finally {
        start.disabled = false;
      }
    });
    sections.push(
      h(
        "section",
        { class: "card", "aria-labelledby": `dataset-${dataset.id}` },
        h(
          "div",
          { class: "card-head" },
          h("h2", { id: `dataset-${dataset.id}` }, dataset.name),
          start,
        ),
        h(
          "p",
          { class: "muted" },
          `${dataset.images} images · ${dataset.classes.length} classes · ${dataset.source_kind} · `,
          h("code", {}, dataset.source_uri),
        ),
        tableHolder,
      ),
    );
  }
  fill(main,
    h("h1", {}, "Datasets and audits"),
    sections.length ? sections : h("p", {}, "No datasets registered yet (", h("code", {}, "auditor dataset add"), ")."),
  );

  const timer = setInterval(async () => {
    for (const id of [...active]) {
      try {
        const audit = await api(`/audits/${id}`);
        rows.get(id)?.replaceChildren(...auditCells(audit));
        if (!ACTIVE.has(audit.status)) {
          active.delete(id);
          notify(`Audit #${id} ${audit.status}`, { error: audit.status === "failed" });
        }
      } catch {
        active.delete(id);
      }
    }
  }, POLL_MS);
  return () => clearInterval(timer);
}
