import { useEffect, useState, type FormEvent } from "react";
import { Link, useLocation } from "wouter";

import { ApiError, continueAsGuest, register, signIn } from "../session";

function explain(e: unknown): string {
  if (e instanceof ApiError) {
    switch (e.code) {
      case "INVALID_CREDENTIALS":
      case "AUTH_INVALID":
        return "That email and password do not match an account.";
      case "EMAIL_TAKEN":
      case "CONFLICT":
        return "An account with that email already exists. Sign in instead.";
      case "RATE_LIMITED":
        return `Too many attempts. Try again${e.retryAfterSeconds ? ` in ${e.retryAfterSeconds} s` : " later"}.`;
      case "VALIDATION_FAILED":
        return "Check the email address; the password needs at least 8 characters.";
      default:
        return "The server could not do that right now. Try again.";
    }
  }
  return "The server cannot be reached. Check your connection and try again.";
}

export function AuthScreen({ mode }: { mode: "sign-in" | "register" }) {
  const [, navigate] = useLocation();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const registering = mode === "register";

  useEffect(() => {
    document.title = registering ? "Create an account · Parley" : "Sign in · Parley";
  }, [registering]);

  const run = async (fn: () => Promise<unknown>) => {
    setBusy(true);
    setError(null);
    try {
      await fn();
      navigate("/");
    } catch (e) {
      setError(explain(e));
    } finally {
      setBusy(false);
    }
  };

  const submit = (e: FormEvent) => {
    e.preventDefault();
    void run(() => (registering ? register(email.trim(), password) : signIn(email.trim(), password)));
  };

  return (
    <main className="auth" id="main">
      <h1>{registering ? "Create your Parley account" : "Sign in to Parley"}</h1>
      <form onSubmit={submit} className="auth-form">
        <label htmlFor="email">Email</label>
        <input id="email" type="email" autoComplete="email" required value={email} onChange={(e) => setEmail(e.target.value)} />
        <label htmlFor="password">Password</label>
        <input
          id="password"
          type="password"
          autoComplete={registering ? "new-password" : "current-password"}
          required
          minLength={registering ? 8 : 1}
          value={password}
          onChange={(e) => setPassword(e.target.value)}
          aria-describedby={registering ? "password-help" : undefined}
        />
        {registering && (
          <p id="password-help" className="help">
            At least 8 characters.
          </p>
        )}
        {error && (
          <p className="form-error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          {registering ? "Create account" : "Sign in"}
        </button>
      </form>
      <p>
        {registering ? (
          <>
            Have an account? <Link href="/sign-in">Sign in</Link>
          </>
        ) : (
          <>
            New here? <Link href="/register">Create an account</Link>
          </>
        )}
      </p>
      <p>
        <button type="button" className="quiet" disabled={busy} onClick={() => run(continueAsGuest)}>
          Continue as guest
        </button>
      </p>
      <p className="help">A guest&apos;s conversations are kept for 7 days after the last visit; create an account to keep them.</p>
    </main>
  );
}
