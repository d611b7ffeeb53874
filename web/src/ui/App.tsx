import { useEffect, useState } from "react";
import { Link, Redirect, Route, Switch, useLocation } from "wouter";

import { chatClient, startChat, stopChat } from "../chat";
import { hasStoredSession, restore } from "../session";
import { Account } from "./Account";
import { AuthScreen } from "./Auth";
import { ChatView } from "./Chat";
import { ConnectionBadge } from "./ConnectionBadge";
import { useConnectionState, useUser } from "./hooks";
import { Sidebar } from "./Sidebar";

function SignedIn() {
  const client = chatClient() ?? startChat();
  const state = useConnectionState(client);
  const user = useUser();
  return (
    <div className="shell">
      <a href="#composer-input" className="skip">
        Skip to the message box
      </a>
      <header className="top">
        <Link href="/" className="brand">
          Parley
        </Link>
        <ConnectionBadge state={state} />
        <span className="spacer" />
        {user?.kind === "guest" && (
          <Link href="/account" className="guest-note">
            Guest: save your account
          </Link>
        )}
        <Link href="/account">Account</Link>
      </header>
      <div className="layout">
        <Sidebar />
        <Switch>
          <Route path="/c/:id">{(p) => <main id="main" className="main"><ChatView key={p.id} id={p.id} /></main>}</Route>
          <Route path="/account">
            <Account />
          </Route>
          <Route path="/">
            <main id="main" className="main welcome">
              <h1>Welcome to Parley</h1>
              <p>Start a new conversation, or pick one from the list.</p>
            </main>
          </Route>
          <Route>
            <Redirect to="/" />
          </Route>
        </Switch>
      </div>
    </div>
  );
}

export function App() {
  const user = useUser();
  const [booting, setBooting] = useState(hasStoredSession());
  const [unreachable, setUnreachable] = useState(false);
  const [location] = useLocation();

  useEffect(() => {
    if (!booting) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let alive = true;
    const attempt = () => {
      void restore().then((r) => {
        if (!alive) return;
        if (r === "unreachable") {
          setUnreachable(true);
          timer = setTimeout(attempt, 2000);
        } else {
          setUnreachable(false);
          setBooting(false);
        }
      });
    };
    attempt();
    return () => {
      alive = false;
      if (timer) clearTimeout(timer);
    };
  }, [booting]);

  useEffect(() => {
    if (!user) stopChat();
  }, [user]);

  if (booting) {
    return (
      <p className="loading" role="status">
        {unreachable ? "The server cannot be reached. Trying again…" : "Loading…"}
      </p>
    );
  }
  if (!user) {
    if (location === "/register") return <AuthScreen mode="register" />;
    if (location !== "/sign-in") return <Redirect to="/sign-in" />;
    return <AuthScreen mode="sign-in" />;
  }
  if (location === "/sign-in" || location === "/register") return <Redirect to="/" />;
  return <SignedIn />;
}
