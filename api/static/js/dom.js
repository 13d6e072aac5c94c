// Small helpers to build DOM and SVG without templates or innerHTML (so no markup injection).

const SVG_NS = "http://www.w3.org/2000/svg";

function apply(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.setAttribute("class", value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  apply(node, attrs);
  return append(node, children);
}

export function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  apply(node, attrs);
  return append(node, children);
}

export function percent(value, digits = 1) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(digits)} %`;
}

/** A white-to-dark-blue ramp for rates in [0, 1], readable behind black or white text. */
export function heat(rate) {
  const t = Math.max(0, Math.min(1, rate)) ** 0.6;
  const mix = (a, b) => Math.round(a + (b - a) * t);
  return `rgb(${mix(247, 8)}, ${mix(251, 48)}, ${mix(255, 107)})`;
}

export function inkOn(rate) {
  return Math.max(0, Math.min(1, rate)) ** 0.6 > 0.45 ? "#fff" : "#111";
}

let toastTimer = null;

/** A short message in the page's status region; errors are announced assertively. */
export function notify(text, { error = false } = {}) {
  const toast = document.getElementById("toast");
  toast.textContent = text;
  toast.setAttribute("role", error ? "alert" : "status");
  toast.classList.toggle("error", error);
  toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (toast.hidden = true), error ? 8000 : 3500);
}

export function errorBox(error) {
  return h("div", { class: "notice error", role: "alert" }, error.message || String(error));
}

/** Typing in a form control must not trigger page shortcuts. */
export function isTyping(event) {
  const target = event.target;
  return (
    event.ctrlKey || event.metaKey || event.altKey ||
    target.closest?.("input, select, textarea, dialog[open]") !== null
  );
}

/** Replace a node's children; arrays are flattened, null and false skipped. */
export function fill(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}
