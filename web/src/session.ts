// Who is signed in, and REST with the access token. The access token lives in memory only;
// the refresh token in sessionStorage (one tab's life; docs/SPEC.md, "The web client").

export interface User {
  id: string;
  email: string | null;
  kind: "registered" | "guest";
  role: string;
  displayName: string | null;
  createdAt: string;
}

interface AuthAnswer {
  user?: User;
  accessToken: string;
  refreshToken: string;
  accessTokenExpiresIn: number;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryable = false,
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
  }
}

const RT_KEY = "parley.refreshToken";
const channel: BroadcastChannel | null =
  typeof BroadcastChannel !== "undefined" ? new BroadcastChannel("parley-auth") : null;

let accessToken: string | null = null;
let accessExpiresAt = 0;
let user: User | null = null;
let refreshing: Promise<string | null> | null = null;
const listeners = new Set<() => void>();

function storedRefresh(): string | null {
  try {
    return sessionStorage.getItem(RT_KEY);
  } catch {
    return null;
  }
}

function storeRefresh(token: string | null): void {
  try {
    if (token === null) sessionStorage.removeItem(RT_KEY);
    else sessionStorage.setItem(RT_KEY, token);
  } catch {
    // storage refused (private mode): the session lasts as long as the page
  }
}

// A duplicated tab starts with a copy of this tab's sessionStorage: when one of them rotates
// the refresh token, it tells the other, which would otherwise present the old one (reuse).
channel?.addEventListener("message", (ev: MessageEvent<{ old: string; next: string }>) => {
  if (ev.data && storedRefresh() === ev.data.old) storeRefresh(ev.data.next);
});

function notify(): void {
  for (const fn of listeners) fn();
}

export function onAuthChange(fn: () => void): () => void {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function currentUser(): User | null {
  return user;
}

export function hasStoredSession(): boolean {
  return storedRefresh() !== null;
}

export const auth = {
  accessToken: (): string | null => accessToken,
  expiresAt: (): number => accessExpiresAt,
  refresh: (): Promise<string | null> => refresh(),
};

function accept(answer: AuthAnswer): void {
  const old = storedRefresh();
  accessToken = answer.accessToken;
  accessExpiresAt = Date.now() + answer.accessTokenExpiresIn * 1000;
  storeRefresh(answer.refreshToken);
  if (old && old !== answer.refreshToken) channel?.postMessage({ old, next: answer.refreshToken });
  if (answer.user) user = answer.user;
  notify();
}

/** Forget the session locally (the server side is the caller's business). */
export function clearSession(): void {
  accessToken = null;
  accessExpiresAt = 0;
  user = null;
  storeRefresh(null);
  notify();
}

/** A fresh access token (rotating the refresh token); null when there is no session left.
 *  One refresh at a time: a second caller waits for the first (never two rotations). */
export function refresh(): Promise<string | null> {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    const rt = storedRefresh();
    if (!rt) return null;
    const r = await fetch("/api/v1/auth/refresh", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ refreshToken: rt }),
    });
    if (r.status === 401 || r.status === 400 || r.status === 403) {
      clearSession();
      return null;
    }
    if (!r.ok) throw new ApiError(r.status, "SERVER_ERROR", "could not refresh the session", true);
    accept((await r.json()) as AuthAnswer);
    return accessToken;
  })().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

async function errorOf(r: Response): Promise<ApiError> {
  let code = "SERVER_ERROR";
  let message = r.statusText;
  let retryable = r.status >= 500;
  try {
    const body = (await r.json()) as { error?: { code: string; message: string; retryable: boolean } };
    if (body.error) ({ code, message, retryable } = body.error);
  } catch {
    // not JSON
  }
  const ra = r.headers.get("Retry-After");
  return new ApiError(r.status, code, message, retryable, ra ? Number(ra) : undefined);
}

/** REST call with the access token; refreshes once on an expired token. */
export async function api<T>(method: string, path: string, body?: unknown, retry = true): Promise<T> {
  if (accessToken === null || accessExpiresAt - Date.now() < 5000) {
    if (hasStoredSession()) await refresh();
  }
  const headers: Record<string, string> = {};
  if (accessToken) headers.authorization = `Bearer ${accessToken}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(`/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401 && retry && hasStoredSession()) {
    const err = await errorOf(r);
    if (err.code === "AUTH_EXPIRED" && (await refresh()) !== null) return api<T>(method, path, body, false);
    if (err.code === "AUTH_INVALID") clearSession();
    throw err;
  }
  if (!r.ok) {
    const err = await errorOf(r);
    if (r.status === 401) clearSession();
    throw err;
  }
  if (r.status === 204) return undefined as T;
  return (await r.json()) as T;
}

async function authCall(path: string, body?: unknown): Promise<User> {
  const r = await fetch(`/api/v1${path}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(accessToken ? { authorization: `Bearer ${accessToken}` } : {}),
    },
    body: JSON.stringify(body ?? {}),
  });
  if (!r.ok) throw await errorOf(r);
  const answer = (await r.json()) as AuthAnswer;
  accept(answer);
  return answer.user as User;
}

export const signIn = (email: string, password: string) => authCall("/auth/login", { email, password });
export const register = (email: string, password: string) => authCall("/auth/register", { email, password });
export const continueAsGuest = () => authCall("/auth/guest");
export const upgradeGuest = (email: string, password: string) => authCall("/auth/upgrade", { email, password });

/** On page load: a refresh token in this tab's storage gives back the session.
 *  "unreachable" when the server could not be asked (the token is kept: try again). */
export async function restore(): Promise<User | null | "unreachable"> {
  if (!hasStoredSession()) return null;
  try {
    if ((await refresh()) === null) return null;
    user = await api<User>("GET", "/me");
    notify();
    return user;
  } catch (e) {
    if (!hasStoredSession()) return null;
    return e instanceof ApiError && e.status < 500 ? null : "unreachable";
  }
}

export async function signOut(everywhere = false): Promise<void> {
  try {
    if (everywhere) await api<void>("POST", "/auth/logout-all");
    else await api<void>("POST", "/auth/logout", { refreshToken: storedRefresh() ?? undefined });
  } finally {
    clearSession();
  }
}
