import { useEffect, useState, useSyncExternalStore } from "react";

import type { ChatClient, ConnectionState } from "../protocol/client";
import type { ConversationState } from "../protocol/conversation";
import { currentUser, onAuthChange, type User } from "../session";

/** The conversation's version, re-read at most once per animation frame: a burst of
 *  deltas between two frames costs one render. */
export function useFrameVersion(conv: ConversationState | null): number {
  const [version, setVersion] = useState(conv?.version ?? 0);
  useEffect(() => {
    if (!conv) return;
    let raf = 0;
    setVersion(conv.version);
    const off = conv.subscribe(() => {
      if (raf) return;
      raf = requestAnimationFrame(() => {
        raf = 0;
        setVersion(conv.version);
      });
    });
    return () => {
      off();
      if (raf) cancelAnimationFrame(raf);
    };
  }, [conv]);
  return version;
}

export function useConnectionState(client: ChatClient | null): ConnectionState {
  const [state, setState] = useState<ConnectionState>(client?.state ?? { kind: "stopped" });
  useEffect(() => {
    if (!client) return;
    setState(client.state);
    return client.onState(setState);
  }, [client]);
  return state;
}

export function useUser(): User | null {
  return useSyncExternalStore(onAuthChange, currentUser);
}

/** Seconds left until `at` (ms), ticking once a second. */
export function useCountdown(at: number | null): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (at === null) return;
    const t = setInterval(() => setNow(Date.now()), 250);
    return () => clearInterval(t);
  }, [at]);
  return at === null ? 0 : Math.max(0, Math.ceil((at - now) / 1000));
}
