// The REST API client: JSON in and out, the API key as a Bearer token, one retry after the
// curator enters a key when the server answers 401.

const KEY = "auditor.apiKey";
const BASE = "/api/v1";

export class ApiError extends Error {
  constructor(status, body) {
    super(typeof body?.detail === "string" ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export const apiKey = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

let askForKey = async () => false;

/** `ask(reason)` resolves true once a key is stored, false when the curator gave up. */
export function onKeyNeeded(ask) {
  askForKey = ask;
}

function headers(extra = {}) {
  const key = apiKey.get();
  return { Accept: "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}), ...extra };
}

export function url(path, params = {}) {
  const target = new URL(BASE + path, location.origin);
  for (const [name, value] of Object.entries(params)) {
    for (const item of [value].flat()) {
      if (item !== undefined && item !== null && item !== "") target.searchParams.append(name, item);
    }
  }
  return target;
}

export async function api(path, { method = "GET", params, body } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const response = await fetch(url(path, params), {
      method,
      headers: headers(body ? { "Content-Type": "application/json" } : {}),
      body: body ? JSON.stringify(body) : undefined,
    });
    if (response.status === 401 && attempt === 0) {
      const reason = apiKey.get() ? "That key was refused; enter another." : undefined;
      if (await askForKey(reason)) continue;
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }
}

const blobs = new Map();

/** Point an <img> at an image. Without a key the browser loads (and caches) it directly; with
 * one the bytes are fetched with the Authorization header and shown from a blob URL. */
export async function showImage(img, imageId, { thumbnail = false } = {}) {
  const path = `/images/${imageId}${thumbnail ? "/thumbnail" : ""}`;
  if (!apiKey.get()) {
    img.src = url(path).toString();
    return;
  }
  if (!blobs.has(path)) {
    const response = await fetch(url(path), { headers: headers() });
    if (!response.ok) {
      img.alt = `${img.alt} (not available: HTTP ${response.status})`;
      return;
    }
    blobs.set(path, URL.createObjectURL(await response.blob()));
  }
  img.src = blobs.get(path);
}
