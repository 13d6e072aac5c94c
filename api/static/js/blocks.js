// Page 4: the Blocks views. The confusion matrix in hierarchy order as a heatmap, blocks
// outlined, the class tree drawn beside its rows (one shared order); clicking a cell shows the
// images behind it grouped by given label, and collapsing a tree node aggregates its rows and
// columns into one.

import { api, ApiError } from "./api.js";
import { fill, h, heat, inkOn, percent, s } from "./dom.js";
import { picture } from "./findings.js";

const MATRIX_PX = 540;
const TREE_PX = 150;
const LABEL_PX = 104;
const HEADER_PX = 96;

const leaves = (node) => (node.children?.length ? node.children.flatMap(leaves) : [node.name]);

function groupLabel(members) {
  return members.length <= 2 ? members.join(" + ") : `${members[0]} + ${members.length - 1} more`;
}

/** The rows (and columns) the matrix shows: a leaf each, or one for a collapsed subtree. */
function visibleUnits(node, collapsed) {
  if (!node.children?.length) return [{ node, members: [node.name], label: node.name }];
  if (collapsed.has(node)) {
    const members = leaves(node);
    return [{ node, members, label: groupLabel(members), collapsed: true }];
  }
  return node.children.flatMap((child) => visibleUnits(child, collapsed));
}

function aggregate(units, confusion) {
  const index = new Map(confusion.order.map((name, i) => [name, i]));
  const counts = units.map((row) =>
    units.map((col) =>
      row.members.reduce(
        (sum, given) => sum + col.members.reduce((inner, predicted) => inner + confusion.matrix[index.get(given)][index.get(predicted)], 0),
        0,
      ),
    ),
  );
  const totals = counts.map((row) => row.reduce((a, b) => a + b, 0));
  return { counts, totals };
}

async function loadAnalyses(auditId) {
  try {
    return await Promise.all([api(`/audits/${auditId}/confusion`), api(`/audits/${auditId}/hierarchy`)]);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

export async function renderBlocks(main, route) {
  const auditId = route.auditId;
  const analyses = await loadAnalyses(auditId);
  if (!analyses) {
    fill(main,
      h("h1", {}, "Blocks"),
      h("p", { class: "notice" }, "This audit has no confusion matrix yet: it is not completed, or the dataset has one class."),
    );
    return;
  }
  const [confusion, hierarchy] = analyses;
  const collapsed = new Set();
  let units = [];
  let cursor = { row: 0, col: 0 };

  const chart = h("div", {
    class: "matrix",
    tabindex: "0",
    role: "group",
    "aria-label": "Confusion matrix in hierarchy order. Arrow keys move between cells, Enter shows the images behind a cell.",
    "aria-describedby": "cell-status",
  });
  const summary = h("p", { class: "muted", "aria-live": "polite" });
  const cellStatus = h("p", { id: "cell-status", class: "muted", "aria-live": "polite" });
  const samples = h("section", { class: "samples", "aria-labelledby": "samples-title" },
    h("h2", { id: "samples-title" }, "Images behind a cell"),
    h("p", { class: "muted" }, "Click a cell (or press Enter on it) to see its images, grouped by given label."),
  );
  const expandAll = h("button", { type: "button", class: "quiet" }, "Expand all");
  expandAll.addEventListener("click", () => {
    collapsed.clear();
    draw();
  });

  function describe(row, col, data) {
    const count = data.counts[row][col];
    const rate = data.totals[row] ? count / data.totals[row] : 0;
    return `Given ${units[row].label}, predicted ${units[col].label}: ${count} image${count === 1 ? "" : "s"} (${percent(rate)} of the row)`;
  }

  function toggle(node) {
    if (collapsed.has(node)) collapsed.delete(node);
    else collapsed.add(node);
    draw();
  }

  function drawTree(root, cell, y0) {
    const layer = s("g", { class: "tree" });
    const unitY = new Map(units.map((unit, i) => [unit.node, y0 + i * cell + cell / 2]));
    const depthOf = (node) => (unitY.has(node) ? 0 : 1 + Math.max(...node.children.map(depthOf)));
    const step = Math.min(28, (TREE_PX - 24) / Math.max(1, depthOf(root)));
    const place = (node, depth) => {
      if (unitY.has(node)) {
        const at = { x: TREE_PX - 8, y: unitY.get(node) };
        if (collapsed.has(node)) layer.append(toggleMark(node, at, true));
        return at;
      }
      const x = 10 + depth * step;
      const children = node.children.map((child) => place(child, depth + 1));
      const ys = children.map((c) => c.y);
      layer.prepend(
        s("line", { x1: x, x2: x, y1: Math.min(...ys), y2: Math.max(...ys) }),
        ...children.map((c) => s("line", { x1: x, x2: c.x, y1: c.y, y2: c.y })),
      );
      const at = { x, y: (Math.min(...ys) + Math.max(...ys)) / 2 };
      layer.append(toggleMark(node, at, false));
      return at;
    };
    place(root, 0);
    return layer;
  }

  function toggleMark(node, at, isCollapsed) {
    const members = leaves(node);
    const label = `${isCollapsed ? "Expand" : "Collapse"} the group of ${members.length} classes: ${members.join(", ")}`;
    const mark = s(
      "g",
      {
        class: `node${isCollapsed ? " collapsed" : ""}`,
        role: "button",
        tabindex: "0",
        "aria-label": label,
        "aria-expanded": String(!isCollapsed),
        "data-node": node.name,
        transform: `translate(${at.x} ${at.y})`,
      },
      s("title", {}, label),
      s("circle", { r: 7 }),
      s("path", { d: isCollapsed ? "M-4 0H4M0 -4V4" : "M-4 0H4" }),
    );
    mark.addEventListener("click", () => toggle(node));
    mark.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        toggle(node);
        chart.querySelector(`[data-node="${CSS.escape(node.name)}"]`)?.focus();
      }
    });
    return mark;
  }

  function draw() {
    units = visibleUnits(hierarchy.tree, collapsed);
    const n = units.length;
    const data = aggregate(units, confusion);
    const cell = Math.max(14, Math.min(44, Math.floor(MATRIX_PX / n)));
    const x0 = TREE_PX + LABEL_PX;
    const y0 = HEADER_PX;
    cursor = { row: Math.min(cursor.row, n - 1), col: Math.min(cursor.col, n - 1) };
    const svg = s("svg", {
      width: x0 + n * cell + 8,
      height: y0 + n * cell + 8,
      class: "heatmap",
    });
    const cells = s("g", { class: "cells" });
    units.forEach((row, i) => {
      units.forEach((col, j) => {
        const count = data.counts[i][j];
        const rate = data.totals[i] ? count / data.totals[i] : 0;
        const rect = s(
          "rect",
          {
            class: "cell",
            x: x0 + j * cell,
            y: y0 + i * cell,
            width: cell,
            height: cell,
            fill: heat(rate),
            "data-row": i,
            "data-col": j,
            "data-given": row.members.join(","),
            "data-predicted": col.members.join(","),
          },
          s("title", {}, describe(i, j, data)),
        );
        rect.addEventListener("click", () => {
          cursor = { row: i, col: j };
          markCursor(svg, cell, x0, y0, data);
          openCell(i, j);
        });
        cells.append(rect);
        if (count > 0 && cell >= 22) {
          cells.append(s("text", { x: x0 + j * cell + cell / 2, y: y0 + i * cell + cell / 2, class: "count", fill: inkOn(rate) }, count));
        }
      });
    });
    const labels = s("g", { class: "labels" });
    units.forEach((unit, i) => {
      const weight = unit.collapsed ? "group" : "";
      labels.append(
        s("text", { x: TREE_PX + 4, y: y0 + i * cell + cell / 2, class: `row-label ${weight}` }, unit.label),
        s("text", { transform: `translate(${x0 + i * cell + cell / 2} ${y0 - 6}) rotate(-60)`, class: `col-label ${weight}` }, unit.label),
      );
    });
    const outlines = s("g", { class: "blocks" });
    for (const block of hierarchy.blocks) {
      const spots = units.flatMap((unit, i) => (unit.members.some((m) => block.includes(m)) ? [i] : []));
      if (spots.length < 2) continue;
      const first = Math.min(...spots);
      const size = (Math.max(...spots) - first + 1) * cell;
      outlines.append(
        s("rect", { x: x0 + first * cell, y: y0 + first * cell, width: size, height: size }, s("title", {}, `Block: ${block.join(", ")}`)),
      );
    }
    svg.append(
      drawTree(hierarchy.tree, cell, y0),
      cells,
      outlines,
      labels,
      s("text", { x: TREE_PX + 4, y: y0 - 8, class: "axis" }, "given ↓"),
    );
    fill(chart, svg);
    markCursor(svg, cell, x0, y0, data);
    chart.onkeydown = (event) => {
      if (event.target !== chart) return;
      const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
      if (moves[event.key]) {
        event.preventDefault();
        const [dr, dc] = moves[event.key];
        cursor = { row: clamp(cursor.row + dr, n), col: clamp(cursor.col + dc, n) };
        markCursor(svg, cell, x0, y0, data);
      } else if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        openCell(cursor.row, cursor.col);
      }
    };
    summary.textContent = `${n} × ${n} ${n === confusion.order.length ? "classes" : `rows and columns (${confusion.order.length} classes, ${collapsed.size} group${collapsed.size === 1 ? "" : "s"} collapsed)`}`;
  }

  const clamp = (value, n) => Math.max(0, Math.min(n - 1, value));

  function markCursor(svg, cell, x0, y0, data) {
    svg.querySelector(".cursor")?.remove();
    svg.append(
      s("rect", { class: "cursor", x: x0 + cursor.col * cell, y: y0 + cursor.row * cell, width: cell, height: cell }),
    );
    cellStatus.textContent = describe(cursor.row, cursor.col, data);
  }

  async function openCell(row, col) {
    const given = units[row].members;
    const predicted = units[col].members;
    fill(samples,
      h("h2", { id: "samples-title" }, `Labeled ${units[row].label}, predicted ${units[col].label}`),
      h("p", { class: "muted" }, "Loading…"),
    );
    let result;
    try {
      result = await api(`/audits/${auditId}/confusion/cell`, { params: { given, predicted, limit: 48 } });
    } catch (error) {
      samples.lastChild.textContent = `Could not load the images: ${error.message}`;
      return;
    }
    const groups = result.groups.filter((group) => group.count > 0);
    fill(samples,
      h("h2", { id: "samples-title" }, `Labeled ${units[row].label}, predicted ${units[col].label}`),
      groups.length ? null : h("p", { class: "muted" }, "No images in this cell."),
      groups.map((group) =>
        h(
          "section",
          { class: "sample-group" },
          h("h3", {}, `Given “${group.label}” · ${group.count} image${group.count === 1 ? "" : "s"}${group.count > group.images.length ? ` (first ${group.images.length})` : ""}`),
          h(
            "ul",
            { class: "gallery" },
            group.images.map((image) =>
              h("li", {}, picture(image.image_id, `${image.predicted} ${percent(image.confidence, 0)}`, {
                thumbnail: true,
                size: "small",
                alt: `${image.path}, labeled ${group.label}, predicted ${image.predicted}`,
              })),
            ),
          ),
        ),
      ),
    );
  }

  fill(main,
    h("div", { class: "page-head" }, h("h1", {}, "Blocks: confusions in hierarchy order"), expandAll),
    h(
      "p",
      { class: "legend" },
      "Rows are given labels, columns predicted classes, both in the order of the class tree on the left. ",
      "Darker = a larger share of the row. ",
      h("span", { class: "swatch block" }), " outlines a block of mutually confused classes. ",
      "Click a tree node to collapse its classes into one row and column.",
    ),
    summary,
    h("div", { class: "blocks-layout" }, h("div", {}, chart, cellStatus), samples),
  );
  draw();
}
