// The page's only way to the daemon: its public API (v1 REST and the WebSocket stream), by
// URLs relative to the page, so it works behind a reverse proxy or an ingress path prefix.

const TOKEN_KEY = "mliot.token";
const base = new URL(".", location.href.split("#")[0]);

export class ApiError extends Error {
  constructor(status, message, details) {
    super(details && details.length ? `${message}: ${details.join("; ")}` : message);
    this.status = status;
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => value ? sessionStorage.setItem(TOKEN_KEY, value)
                        : sessionStorage.removeItem(TOKEN_KEY),
};

let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

export async function request(method, path, body, contentType = "application/json") {
  const headers = {};
  const t = token.get();
  if (t) headers.Authorization = `Bearer ${t}`;
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = contentType;
    payload = contentType === "application/json" ? JSON.stringify(body) : body;
  }
  let response;
  try {
    response = await fetch(new URL(path, base), { method, headers, body: payload });
  } catch (exc) {
    throw new ApiError(0, `the daemon cannot be reached (${exc.message})`);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
  if (!response.ok) {
    let message = (data && data.error) || `${response.status} ${response.statusText}`;
    if (response.status === 401) {
      message = `${t ? "The daemon refused this token" : "This daemon needs its token"} ` +
                `(${message}): enter it with Token.`;
      onUnauthorized();
    }
    throw new ApiError(response.status, message, data && data.details);
  }
  return data;
}

export const get = (path) => request("GET", path);

// A binary GET (a query's preview) with the token: {blob, type}.
export async function requestBlob(path) {
  const headers = {};
  if (token.get()) headers.Authorization = `Bearer ${token.get()}`;
  const response = await fetch(new URL(path, base), { headers });
  if (!response.ok) throw new ApiError(response.status, `${response.status} ${response.statusText}`);
  return { blob: await response.blob(), type: response.headers.get("Content-Type") || "" };
}

// A WebSocket on an app's stream; `onMessage` gets each parsed message. Watchers ask for at
// most `maxPerS` predictions a second: the daemon skips (and counts) the rest.
export function stream(app, { watch = false, maxPerS = 0 } = {}, onMessage, onClose) {
  const url = new URL(`v1/apps/${encodeURIComponent(app)}/stream`, base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (watch) url.searchParams.set("watch", "true");
  if (maxPerS) url.searchParams.set("max_per_s", String(maxPerS));
  if (token.get()) url.searchParams.set("token", token.get());
  const ws = new WebSocket(url);
  ws.onmessage = (event) => onMessage(JSON.parse(event.data));
  ws.onclose = (event) => onClose && onClose(event);
  return ws;
}
