// The one ChatClient of this tab, made when someone signs in and stopped at sign-out.

import { ChatClient } from "./protocol/client";
import type { Message } from "./protocol/types";
import { api, auth, clearSession } from "./session";

let client: ChatClient | null = null;

interface Page<T> {
  items: T[];
  nextCursor: string | null;
}

export async function loadHistory(conversationId: string): Promise<Message[]> {
  const all: Message[] = [];
  let after = "0";
  for (;;) {
    const page = await api<Page<Message>>(
      "GET",
      `/conversations/${conversationId}/messages?afterSeq=${after}&limit=500`,
    );
    all.push(...page.items);
    if (page.nextCursor === null) return all;
    after = page.nextCursor;
  }
}

export function wsUrl(): string {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws`;
}

export function startChat(): ChatClient {
  if (client) return client;
  const c = new ChatClient({
    url: wsUrl(),
    auth,
    loadHistory,
    onSignedOut: () => {
      stopChat();
      clearSession();
    },
  });
  client = c;
  window.addEventListener("online", onOnline);
  window.addEventListener("offline", onOffline);
  if (!navigator.onLine) c.setOnline(false);
  c.start();
  return c;
}

function onOnline(): void {
  client?.setOnline(true);
}

function onOffline(): void {
  client?.setOnline(false);
}

export function chatClient(): ChatClient | null {
  return client;
}

export function stopChat(): void {
  window.removeEventListener("online", onOnline);
  window.removeEventListener("offline", onOffline);
  client?.stop();
  client = null;
}
