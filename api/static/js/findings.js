// Page 2: the finding queue. Filters by kind, class, vendor and status; one finding at a time,
// large enough to judge, with its evidence; keyboard shortcuts for every decision.

import { api, showImage } from "./api.js";
import { fill, h, isTyping, percent } from "./dom.js";
import { review } from "./review.js";

const PAGE_SIZE = 50;
const STATUSES = ["open", "confirmed", "dismissed", "relabeled"];
const FILTERS = ["kind", "label", "vendor", "status"];
const SHORTCUTS = [
  ["C", "confirm"],
  ["D", "dismiss"],
  ["R", "relabel"],
  ["J / →", "next"],
  ["K / ←", "previous"],
];

export const kindName = (kind) => kind.replaceAll("_", " ");

/** A figure that scales small images up with hard pixel edges, and large ones down. */
export function picture(imageId, caption, { thumbnail = false, size = "large", alt } = {}) {
  const img = h("img", { alt: alt ?? caption, class: `pic ${size}` });
  img.addEventListener("load", () => {
    img.classList.toggle("pixelated", img.naturalWidth < img.clientWidth);
  });
  showImage(img, imageId, { thumbnail });
  return h("figure", { class: `figure ${size}` }, img, h("figcaption", {}, caption));
}

export async function auditClasses(auditId) {
  const audit = await api(`/audits/${auditId}`);
  const dataset = await api(`/datasets/${audit.dataset_id}`);
  return dataset.class_list ?? dataset.classes;
}

function select(labelText, name, options, value) {
  const id = `filter-${name}`;
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, labelText),
    h(
      "select",
      { id, name },
      options.map(([optionValue, text]) =>
        h("option", { value: optionValue, selected: optionValue === value }, text),
      ),
    ),
  );
}

// An ambiguous class pair is about two classes, not one image's label.
const classPair = (finding) => (finding.kind === "ambiguous_classes" ? finding.evidence?.classes : null);

function labelFacts(finding) {
  const pair = classPair(finding);
  if (!pair) {
    return [
      ["Given label", finding.given_label ?? "–"],
      ["Suggested label", finding.suggested_label ?? "–"],
    ];
  }
  const { recommendation, confusion_a_to_b: aToB, confusion_b_to_a: bToA } = finding.evidence;
  return [
    ["Classes", pair.join(" ↔ ")],
    ["Recommendation", recommendation === "merge" ? "Merge the classes" : "Clarify the guideline"],
    [`Labeled ${pair[0]}, predicted ${pair[1]}`, percent(aToB)],
    [`Labeled ${pair[1]}, predicted ${pair[0]}`, percent(bToA)],
  ];
}

// An ambiguous pair's example images: each one's label and the class the model gave it.
function exampleCaption(finding, imageId, path) {
  const example = classPair(finding) && finding.evidence.examples?.find((e) => e.image_id === imageId);
  return example ? `${path} · ${example.label}, predicted ${example.predicted}` : path;
}

function queueLabels(finding) {
  const pair = classPair(finding);
  if (pair) return pair.join(" ↔ ");
  if (!finding.given_label) return finding.images[0] ?? "";
  return `${finding.given_label}${finding.suggested_label ? ` → ${finding.suggested_label}` : ""}`;
}

function facts(finding) {
  const rows = [
    ...labelFacts(finding),
    ["Score", finding.score.toFixed(3)],
    ["Severity", finding.severity],
    ["Status", finding.reviewer ? `${finding.status} (by ${finding.reviewer})` : finding.status],
  ];
  const typical = finding.evidence?.dataset_median_distance;
  if (typical && finding.evidence?.mean_neighbour_distance !== undefined) {
    const ratio = finding.evidence.mean_neighbour_distance / typical;
    rows.push(["Nearest images", `${ratio.toFixed(1)}× as far as is typical in this dataset`]);
  }
  return h("dl", { class: "facts" }, rows.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

function neighbours(finding) {
  const items = finding.evidence?.neighbours ?? finding.evidence?.members ?? [];
  if (!items.length) return null;
  const isGroup = !finding.evidence?.neighbours;
  const typical = finding.evidence?.dataset_median_distance;
  return h(
    "section",
    { class: "evidence", "aria-labelledby": "evidence-title" },
    h("h3", { id: "evidence-title" }, isGroup ? "Group members" : "Nearest images"),
    h(
      "ul",
      { class: "gallery" },
      items.map((item) => {
        const agrees =
          item.label === finding.given_label ? "given" : item.label === finding.suggested_label ? "suggested" : "other";
        const nearness =
          item.similarity !== undefined
            ? ` · ${item.similarity.toFixed(2)}`
            : item.distance !== undefined && typical
              ? ` · ${(item.distance / typical).toFixed(1)}×`
              : "";
        return h(
          "li",
          { class: `match-${agrees}` },
          picture(item.image_id, `${item.label ?? "unlabeled"}${nearness}`, {
            thumbnail: true,
            size: "small",
            alt: `Neighbour ${item.path}, labeled ${item.label}`,
          }),
        );
      }),
    ),
    isGroup
      ? null
      : h(
          "p",
          { class: "legend" },
          h("span", { class: "swatch given" }), " labeled like the given label  ",
          finding.suggested_label
            ? [h("span", { class: "swatch suggested" }), " labeled like the suggestion"]
            : null,
        ),
  );
}

function probabilities(finding) {
  const top = finding.evidence?.top_classes;
  if (!top?.length) return null;
  return h(
    "table",
    { class: "compact" },
    h("caption", {}, "Model probabilities"),
    h("thead", {}, h("tr", {}, ["Class", "Model", "Adjusted"].map((t) => h("th", { scope: "col" }, t)))),
    h(
      "tbody",
      {},
      top.map((row) => h("tr", {}, h("th", { scope: "row" }, row.label), h("td", {}, percent(row.model)), h("td", {}, percent(row.combined)))),
    ),
  );
}

export async function renderFindings(main, route) {
  const auditId = route.auditId;
  const [classes, vendors] = await Promise.all([
    auditClasses(auditId),
    api(`/audits/${auditId}/vendors`).then((v) => v.items.map((item) => item.vendor)).catch(() => []),
  ]);
  const filters = Object.fromEntries(FILTERS.map((name) => [name, route.params.get(name) ?? ""]));
  if (!route.params.has("status")) filters.status = "open";
  let items = [];
  let cursor = null;
  let current = 0;
  let conflict = null;

  const kindSelect = h("div", { class: "field" });
  const filterForm = h(
    "form",
    { class: "filters", "aria-label": "Filter findings" },
    kindSelect,
    select("Class", "label", [["", "any class"], ...classes.map((c) => [c, c])], filters.label),
    select("Vendor", "vendor", [["", "any vendor"], ...vendors.map((v) => [v, v])], filters.vendor),
    select("Status", "status", [["", "any status"], ...STATUSES.map((s) => [s, s])], filters.status),
  );
  const queue = h("ol", { class: "queue-list", "aria-label": "Findings" });
  const more = h("button", { type: "button", class: "quiet", hidden: true }, "Load more");
  const count = h("p", { class: "muted", "aria-live": "polite" });
  const detail = h("section", { class: "detail", "aria-label": "Selected finding", tabindex: "-1" });
  fill(main,
    h("div", { class: "page-head" }, h("h1", {}, "Finding queue"), filterForm),
    h(
      "p",
      { class: "shortcuts", "aria-label": "Keyboard shortcuts" },
      SHORTCUTS.map(([key, what]) => h("span", {}, h("kbd", {}, key), ` ${what}`)),
    ),
    h("div", { class: "queue-layout" }, h("nav", { class: "queue", "aria-label": "Finding queue" }, count, queue, more), detail),
  );

  function kindOptions(counts) {
    const known = Object.entries(counts ?? {});
    const total = known.reduce((sum, [, n]) => sum + n, 0);
    fill(kindSelect,
      ...select(
        "Kind",
        "kind",
        [["", `all kinds (${total})`], ...known.map(([kind, n]) => [kind, `${kindName(kind)} (${n})`])],
        filters.kind,
      ).childNodes,
    );
  }

  function queueItem(finding, index) {
    const button = h(
      "button",
      { type: "button", class: "queue-item", "aria-current": index === current ? "true" : "false" },
      h("span", { class: `dot status-${finding.status}`, title: finding.status }),
      h("span", { class: "what" }, kindName(finding.kind)),
      h(
        "span",
        { class: "labels" },
        queueLabels(finding),
      ),
      h("span", { class: "score" }, finding.score.toFixed(2)),
      h("span", { class: "state" }, finding.status === "open" ? h("span", { class: "visually-hidden" }, "open") : finding.status),
    );
    button.addEventListener("click", () => show(index));
    return h("li", {}, button);
  }

  function renderQueue() {
    fill(queue, ...items.map(queueItem));
    more.hidden = cursor === null;
    count.textContent = items.length ? `${items.length}${cursor ? "+" : ""} findings` : "";
  }

  function relabelForm(finding) {
    const picker = h(
      "select",
      { id: "relabel-class", name: "new_label" },
      classes.map((c) => h("option", { value: c, selected: c === (finding.suggested_label ?? finding.given_label) }, c)),
    );
    const form = h(
      "form",
      { class: "relabel", hidden: true, "aria-label": "Relabel" },
      h("label", { for: "relabel-class" }, "New label"),
      picker,
      h("button", { type: "submit", class: "primary" }, "Apply"),
      h("button", { type: "button", class: "quiet", onclick: () => (form.hidden = true) }, "Cancel"),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      decide("relabel", { new_label: picker.value });
    });
    form.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && event.target === picker) {
        event.preventDefault();
        form.requestSubmit();
      } else if (event.key === "Escape") {
        form.hidden = true;
        queue.querySelector("[aria-current=true]")?.focus();
      }
    });
    return form;
  }

  function renderDetail() {
    const finding = items[current];
    if (!finding) {
      fill(detail, h("p", { class: "muted" }, "No findings match these filters."));
      return;
    }
    const relabel = finding.given_label && !classPair(finding) ? relabelForm(finding) : null;
    const action = (text, key, onclick, extra = {}) =>
      h("button", { type: "button", "aria-keyshortcuts": key, onclick, ...extra }, text, " ", h("kbd", {}, key));
    fill(detail,
      conflict ? h("div", { class: "notice error", role: "alert" }, conflict) : null,
      h(
        "h2",
        {},
        `${kindName(finding.kind)} `,
        h("span", { class: "muted" }, `#${finding.id} · ${current + 1} of ${items.length}${cursor ? "+" : ""}`),
      ),
      h(
        "div",
        { class: "finding-body" },
        h(
          "div",
          { class: "finding-images" },
          finding.image_ids.slice(0, 4).map((id, i) =>
            picture(id, exampleCaption(finding, id, finding.images[i]), {
              alt: `Image ${finding.images[i]}${
                finding.given_label && !classPair(finding) ? `, labeled ${finding.given_label}` : ""
              }`,
            }),
          ),
        ),
        h("div", { class: "finding-facts" }, facts(finding), probabilities(finding)),
      ),
      h(
        "div",
        { class: "actions", role: "group", "aria-label": "Decision" },
        action("Confirm", "C", () => decide("confirm"), { class: "confirm" }),
        action("Dismiss", "D", () => decide("dismiss")),
        relabel ? action("Relabel…", "R", () => openRelabel()) : null,
        action("Previous", "K", () => show(current - 1), { class: "quiet" }),
        action("Next", "J", () => show(current + 1), { class: "quiet" }),
      ),
      relabel,
      neighbours(finding),
      Object.keys(finding.evidence ?? {}).length
        ? h("details", {}, h("summary", {}, "All evidence"), h("pre", {}, JSON.stringify(finding.evidence, null, 2)))
        : null,
    );
  }

  function openRelabel() {
    const form = detail.querySelector("form.relabel");
    if (!form) return;
    form.hidden = false;
    form.querySelector("select").focus();
  }

  async function show(index, { focus = false } = {}) {
    if (index >= items.length && cursor) await loadMore();
    if (index < 0 || index >= items.length) return;
    conflict = null;
    current = index;
    for (const [i, li] of [...queue.children].entries()) {
      li.firstChild.setAttribute("aria-current", i === current ? "true" : "false");
    }
    renderDetail();
    const item = queue.children[current]?.firstChild;
    item?.scrollIntoView({ block: "nearest" });
    if (focus) item?.focus();
  }

  async function decide(action, extra = {}) {
    const finding = items[current];
    if (!finding || (action === "relabel" && !finding.given_label)) return;
    const result = await review(finding, action, extra);
    items[current] = result.finding;
    queue.children[current]?.replaceWith(queueItem(result.finding, current));
    if (result.saved && current + 1 < items.length) {
      await show(current + 1, { focus: true });
    } else {
      conflict = result.conflict ?? null;
      renderDetail();
      queue.children[current]?.firstChild.focus();
    }
  }

  async function fetchPage(after) {
    const params = { ...filters, limit: PAGE_SIZE, cursor: after };
    return api(`/audits/${auditId}/findings`, { params });
  }

  async function loadMore() {
    const page = await fetchPage(cursor);
    items = items.concat(page.items);
    cursor = page.next_cursor;
    renderQueue();
  }

  async function reload() {
    const page = await fetchPage(null);
    items = page.items;
    cursor = page.next_cursor;
    current = 0;
    kindOptions(page.counts);
    renderQueue();
    renderDetail();
  }

  filterForm.addEventListener("change", (event) => {
    filters[event.target.name] = event.target.value;
    const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v !== ""));
    query.set("status", filters.status); // "" (any status) differs from the default, open
    history.replaceState(null, "", `#/audits/${auditId}/findings?${query}`);
    reload();
  });
  more.addEventListener("click", loadMore);

  const keys = {
    c: () => decide("confirm"),
    d: () => decide("dismiss"),
    r: openRelabel,
    j: () => show(current + 1, { focus: true }),
    ArrowRight: () => show(current + 1, { focus: true }),
    k: () => show(current - 1, { focus: true }),
    ArrowLeft: () => show(current - 1, { focus: true }),
  };
  function onKey(event) {
    const handler = keys[event.key.length === 1 ? event.key.toLowerCase() : event.key];
    if (!handler || isTyping(event)) return;
    event.preventDefault();
    handler();
  }
  document.addEventListener("keydown", onKey);
  await reload();
  return () => document.removeEventListener("keydown", onKey);
}
