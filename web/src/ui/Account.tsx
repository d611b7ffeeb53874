import { useCallback, useEffect, useState, type FormEvent } from "react";
import { useLocation } from "wouter";

import { api, ApiError, clearSession, signOut, upgradeGuest, type User } from "../session";
import { stopChat } from "../chat";
import { useUser } from "./hooks";

interface Session {
  id: string;
  createdAt: string;
  lastUsedAt: string;
  expiresAt: string;
  userAgent: string | null;
  ip: string | null;
  current: boolean;
}

function when(iso: string): string {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function Upgrade() {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState(false);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    try {
      await upgradeGuest(email.trim(), password);
      setDone(true);
    } catch (err) {
      setError(
        err instanceof ApiError && (err.code === "EMAIL_TAKEN" || err.code === "CONFLICT")
          ? "An account with that email already exists."
          : "Check the email address; the password needs at least 8 characters.",
      );
    }
  };
  if (done) return <p role="status">Your account is saved. Every conversation is kept.</p>;
  return (
    <section aria-labelledby="upgrade-title" className="card">
      <h2 id="upgrade-title">Keep your conversations</h2>
      <p>You are a guest. Add an email and a password to keep this account and all its conversations.</p>
      <form onSubmit={submit} className="auth-form">
        <label htmlFor="upgrade-email">Email</label>
        <input id="upgrade-email" type="email" required autoComplete="email" value={email} onChange={(e) => setEmail(e.target.value)} />
        <label htmlFor="upgrade-password">Password</label>
        <input id="upgrade-password" type="password" required minLength={8} autoComplete="new-password" value={password} onChange={(e) => setPassword(e.target.value)} />
        {error && (
          <p className="form-error" role="alert">
            {error}
          </p>
        )}
        <button type="submit">Save my account</button>
      </form>
    </section>
  );
}

export function Account() {
  const user = useUser();
  const [, navigate] = useLocation();
  const [sessions, setSessions] = useState<Session[]>([]);
  const [exportAvailable, setExportAvailable] = useState(false);
  const [confirmDelete, setConfirmDelete] = useState(false);
  const [message, setMessage] = useState<string | null>(null);
  // stays shown after the upgrade (the user is no longer a guest) to say it worked
  const [showUpgrade, setShowUpgrade] = useState(false);
  useEffect(() => {
    if (user?.kind === "guest") setShowUpgrade(true);
  }, [user]);

  const loadSessions = useCallback(async () => {
    try {
      setSessions((await api<{ items: Session[] }>("GET", "/sessions")).items);
    } catch {
      setMessage("The sessions could not be loaded.");
    }
  }, []);

  useEffect(() => {
    document.title = "Your account · Parley";
    void loadSessions();
    // the export appears once the server has it: OPTIONS answers 2xx for a route that exists
    fetch("/api/v1/me/export", { method: "OPTIONS" })
      .then((r) => setExportAvailable(r.ok))
      .catch(() => setExportAvailable(false));
  }, [loadSessions]);

  const leave = async (everywhere: boolean) => {
    stopChat();
    await signOut(everywhere).catch(() => undefined);
    navigate("/sign-in");
  };

  const download = async () => {
    try {
      const data = await api<unknown>("GET", "/me/export");
      const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = "parley-export.json";
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
    } catch {
      setMessage("Your data could not be downloaded. Try again.");
    }
  };

  const deleteAccount = async () => {
    try {
      await api<void>("DELETE", "/me");
      stopChat();
      clearSession();
      navigate("/sign-in");
    } catch {
      setMessage("The account could not be deleted. Try again.");
    }
  };

  const u: User | null = user;
  return (
    <main className="account" id="main">
      <h1>Your account</h1>
      {u && (
        <p>
          {u.kind === "guest" ? "Signed in as a guest." : `Signed in as ${u.email}.`}
        </p>
      )}
      {message && <p role="alert">{message}</p>}
      {showUpgrade && <Upgrade />}
      <section aria-labelledby="sessions-title" className="card">
        <h2 id="sessions-title">Where you are signed in</h2>
        <ul className="sessions">
          {sessions.map((s) => (
            <li key={s.id} data-session={s.id}>
              <span>
                {s.userAgent ? s.userAgent.slice(0, 80) : "Unknown browser"}
                {s.current && <strong> (this tab)</strong>}
                <br />
                <small>
                  Signed in {when(s.createdAt)}; last used {when(s.lastUsedAt)}
                </small>
              </span>
              {!s.current && (
                <button
                  type="button"
                  onClick={async () => {
                    await api<void>("DELETE", `/sessions/${s.id}`).catch(() => undefined);
                    await loadSessions();
                  }}
                >
                  Revoke
                </button>
              )}
            </li>
          ))}
        </ul>
      </section>
      <section aria-labelledby="leave-title" className="card">
        <h2 id="leave-title">Sign out and your data</h2>
        <div className="button-row">
          <button type="button" onClick={() => leave(false)}>
            Sign out
          </button>
          <button type="button" onClick={() => leave(true)}>
            Sign out everywhere
          </button>
          {exportAvailable && (
            <button type="button" onClick={download}>
              Download my data
            </button>
          )}
        </div>
        {!confirmDelete ? (
          <button type="button" className="danger" onClick={() => setConfirmDelete(true)}>
            Delete my account
          </button>
        ) : (
          <div className="confirm" role="group" aria-label="Confirm account deletion">
            <p>Delete your account and every conversation? This cannot be undone.</p>
            <button type="button" className="danger" autoFocus onClick={deleteAccount}>
              Yes, delete my account
            </button>
            <button type="button" className="quiet" onClick={() => setConfirmDelete(false)}>
              Keep my account
            </button>
          </div>
        )}
      </section>
    </main>
  );
}
