// Page 5: per-class and per-vendor tables with charts, and the layer separability chart
// (how well each layer separates each level of the class hierarchy, input to output).

import { api, ApiError } from "./api.js";
import { fill, h, percent, s } from "./dom.js";

// Okabe–Ito: distinguishable with the common colour-vision deficiencies.
const PALETTE = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000"];

async function optional(path) {
  try {
    return await api(path);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

function bar(rate, label) {
  const fill = h("span", { class: "bar-fill" });
  fill.style.width = `${Math.min(100, rate * 100)}%`;
  return h("span", { class: "bar", role: "img", "aria-label": label }, fill);
}

function classTable(classes) {
  const rows = [...classes.items].sort((a, b) => (b.estimated_noise_rate ?? 0) - (a.estimated_noise_rate ?? 0));
  const hasNoise = rows.some((row) => row.estimated_noise_rate !== undefined);
  return h(
    "section",
    { class: "card", "aria-labelledby": "classes-title" },
    h("h2", { id: "classes-title" }, "Classes"),
    h(
      "p",
      { class: "muted" },
      `Label health ${percent(classes.label_health)} · overall health ${percent(classes.health_score)}`,
      hasNoise ? ". Estimated label noise is the share of a class's labels flagged as mislabeled; most confused with, where those labels belong by the model's confident counts." : "",
    ),
    h(
      "table",
      {},
      h(
        "thead",
        {},
        h("tr", {}, ["Class", "Images", hasNoise ? "Estimated label noise" : null, "Most confused with"].filter(Boolean).map((t) => h("th", { scope: "col" }, t))),
      ),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h(
            "tr",
            {},
            h("th", { scope: "row" }, row.class),
            h("td", { class: "num" }, row.images),
            hasNoise
              ? h("td", { class: "noise" }, bar(row.estimated_noise_rate ?? 0, `${percent(row.estimated_noise_rate)} noise`), ` ${percent(row.estimated_noise_rate)}`)
              : null,
            h("td", {}, (row.top_confusions ?? []).map((c) => `${c.class} ${percent(c.share, 0)}`).join(", ") || "–"),
          ),
        ),
      ),
    ),
  );
}

/** Estimated error rate per vendor with its 95 % interval, and the confirmed rate. */
function vendorChart(items) {
  const width = 520;
  const rowH = 34;
  const left = 110;
  const scale = Math.max(0.05, ...items.map((v) => v.ci_high));
  const x = (rate) => left + (rate / scale) * (width - left - 20);
  const svg = s("svg", { width, height: items.length * rowH + 34, class: "chart", role: "img", "aria-labelledby": "vendor-chart-title" },
    s("title", { id: "vendor-chart-title" }, "Estimated error rate per vendor with 95 % interval; diamonds: confirmed rate"),
  );
  items.forEach((v, i) => {
    const y = 14 + i * rowH + rowH / 2;
    svg.append(
      s("text", { x: left - 8, y, class: "row-label" }, v.vendor),
      s("line", { x1: x(v.ci_low), x2: x(v.ci_high), y1: y, y2: y, class: "whisker" }),
      s("circle", { cx: x(v.estimated_error_rate), cy: y, r: 6, class: "estimate" }),
      v.confirmed_error_rate === null
        ? null
        : s("path", { d: `M${x(v.confirmed_error_rate)} ${y - 7}l7 7l-7 7l-7 -7z`, class: "confirmed" }),
    );
  });
  const axisY = items.length * rowH + 20;
  svg.append(s("line", { x1: x(0), x2: x(scale), y1: axisY - 6, y2: axisY - 6, class: "axis-line" }));
  for (const tick of [0, scale / 2, scale]) {
    svg.append(s("text", { x: x(tick), y: axisY + 10, class: "tick" }, percent(tick, 0)));
  }
  return svg;
}

function vendorTable(vendors) {
  const items = vendors.items;
  return h(
    "section",
    { class: "card", "aria-labelledby": "vendors-title" },
    h("h2", { id: "vendors-title" }, "Vendors"),
    items.length ? vendorChart(items) : h("p", { class: "muted" }, "No vendor labels in this dataset."),
    items.length
      ? h("p", { class: "vendor-key" }, "● estimated error rate, line: 95 % interval · ◆ confirmed by curators")
      : null,
    items.length && vendors.caution ? h("p", { class: "caution", role: "note" }, vendors.caution) : null,
    items.length
      ? h(
          "table",
          {},
          h("thead", {}, h("tr", {}, ["Vendor", "Images", "Flagged", "Estimated error rate (95 % interval)", "Reviewed", "Confirmed error rate"].map((t) => h("th", { scope: "col" }, t)))),
          h(
            "tbody",
            {},
            items.map((v) =>
              h(
                "tr",
                {},
                h("th", { scope: "row" }, v.vendor),
                h("td", { class: "num" }, v.images),
                h("td", { class: "num" }, v.flagged ?? "–"),
                h("td", {}, `${percent(v.estimated_error_rate)} (${percent(v.ci_low)} – ${percent(v.ci_high)})`),
                h("td", { class: "num" }, v.reviewed ?? "–"),
                h("td", {}, v.confirmed_error_rate === null ? "no reviews yet" : percent(v.confirmed_error_rate)),
              ),
            ),
          ),
        )
      : null,
  );
}

function levelName(level, i, layers) {
  const groups = layers.groups_per_level?.[i];
  return `${typeof level === "string" ? level.replaceAll("_", " ") : `level ${i + 1}`}${groups ? ` (${groups} groups)` : ""}`;
}

function layerChart(layers) {
  const width = 560;
  const height = 260;
  const pad = { left: 44, right: 16, top: 12, bottom: 40 };
  const x = (i) => pad.left + (layers.layers.length === 1 ? 0.5 : i / (layers.layers.length - 1)) * (width - pad.left - pad.right);
  const y = (v) => pad.top + (1 - v) * (height - pad.top - pad.bottom);
  const svg = s("svg", { width, height, class: "chart", role: "img", "aria-labelledby": "layers-chart-title" },
    s("title", { id: "layers-chart-title" }, "Separability of each hierarchy level per layer, input to output"),
  );
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(
      s("line", { x1: pad.left, x2: width - pad.right, y1: y(tick), y2: y(tick), class: "grid" }),
      s("text", { x: pad.left - 6, y: y(tick), class: "row-label" }, tick.toFixed(2)),
    );
  }
  layers.layers.forEach((layer, i) => svg.append(s("text", { x: x(i), y: height - 18, class: "tick" }, layer)));
  layers.levels.forEach((_, level) => {
    const points = layers.layers.flatMap((__, i) => {
      const value = layers.separability[i][level];
      return value === null ? [] : [[x(i), y(value)]];
    });
    const colour = PALETTE[level % PALETTE.length];
    svg.append(
      s("polyline", { points: points.map((p) => p.join(",")).join(" "), stroke: colour, class: "series" }),
      ...points.map(([cx, cy]) => s("circle", { cx, cy, r: 4, fill: colour })),
    );
  });
  return svg;
}

function layerSection(layers) {
  const body = layers
    ? [
        h("div", { class: "chart-with-legend" },
          layerChart(layers),
          h("ul", { class: "key" }, layers.levels.map((level, i) => {
            const swatch = h("span", { class: "swatch" });
            swatch.style.background = PALETTE[i % PALETTE.length];
            return h("li", {}, swatch, levelName(level, i, layers));
          })),
        ),
        h(
          "table",
          { class: "compact" },
          h("caption", {}, "Separability (higher = the layer separates the level's groups better)"),
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Layer"), layers.levels.map((level, i) => h("th", { scope: "col" }, levelName(level, i, layers))))),
          h("tbody", {}, layers.layers.map((layer, i) =>
            h("tr", {}, h("th", { scope: "row" }, layer), layers.separability[i].map((v) => h("td", { class: "num" }, v === null ? "–" : v.toFixed(3)))),
          )),
        ),
      ]
    : h("p", { class: "muted" }, "No layer analysis for this audit.");
  return h(
    "section",
    { class: "card", "aria-labelledby": "layers-title" },
    h("h2", { id: "layers-title" }, "Layer separability"),
    h("p", { class: "muted" }, "As in the Blocks paper: early layers tell the coarse groups apart; the last layers are needed for single classes."),
    body,
  );
}

export async function renderTables(main, route) {
  const base = `/audits/${route.auditId}`;
  const [classes, vendors, layers] = await Promise.all([
    optional(`${base}/classes`),
    api(`${base}/vendors`),
    optional(`${base}/layers`),
  ]);
  fill(main,
    h("h1", {}, "Classes, vendors and layers"),
    h(
      "div",
      { class: "two-columns" },
      classes ? classTable(classes) : h("p", { class: "notice" }, "No class summary yet (the audit is not completed)."),
      h("div", {}, vendorTable(vendors), layerSection(layers)),
    ),
  );
}
