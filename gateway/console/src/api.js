// The admin API with the session cookie: reads as they are, changes with the session's CSRF
// token in its header. The cookie itself is HttpOnly: this script never sees it.

let session = null;

/** The signed-in session (`{name, role, team, csrf, csrf_header}`), or null. */
export function current() {
  return session;
}

/** A failed call: the HTTP status and the gateway's message. */
export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function call(method, path, body) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (session && method !== 'GET') headers[session.csrf_header] = session.csrf;
  const response = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let value = null;
  try { value = text ? JSON.parse(text) : null; } catch { value = null; }
  if (!response.ok) {
    const error = value && value.error;
    if (response.status === 401) session = null;
    throw new ApiError(response.status, error ? error.message : `${response.status} ${response.statusText}`,
      error ? error.code : undefined);
  }
  return value;
}

/** GET an admin path (`/admin/v1/...`). */
export const get = (path) => call('GET', path);
/** POST a JSON body to an admin path. */
export const post = (path, body = {}) => call('POST', path, body);

/** The session the cookie names, if any. */
export async function resume() {
  try {
    session = await call('GET', '/console/session');
  } catch (e) {
    if (e.status !== 401) throw e;
    session = null;
  }
  return session;
}

/** Signs in with an admin token or an operator's secret (sent once, in the body). */
export async function signIn(secret) {
  session = await call('POST', '/console/session', { secret });
  return session;
}

/** Ends the session. */
export async function signOut() {
  try {
    await call('DELETE', '/console/session');
  } finally {
    session = null;
  }
}

/** Whether the session may change what belongs to `team` (the server decides; this only
 * hides buttons that would be refused). */
export function mayManage(team) {
  if (!session) return false;
  if (session.role === 'admin') return true;
  return session.role === 'team-admin' && session.team === team;
}

/** A query string of the fields given. */
export function query(fields) {
  const pairs = Object.entries(fields).filter(([, v]) => v !== undefined && v !== null && v !== '');
  return pairs.length ? `?${new URLSearchParams(pairs)}` : '';
}
