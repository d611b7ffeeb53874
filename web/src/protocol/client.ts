// The chat.v1 client: one WebSocket, reconnect with backoff, resume, re-send, in-band
// token refresh. No React here: the UI subscribes to state and conversation changes.

import { backoffDelay } from "./backoff";
import { closeRule } from "./closeCodes";
import { ConversationState } from "./conversation";
import type { ErrorData, Limits, Message, ServerFrame, SocketFactory, SocketLike } from "./types";

export type ConnectionState =
  | { kind: "connecting" }
  | { kind: "connected" }
  /** waiting to reconnect: `at` is when the next attempt starts (ms, the client's clock) */
  | { kind: "reconnecting"; at: number; attempt: number; reason: string }
  /** the browser is offline, or a terminal close: no reconnect until told */
  | { kind: "offline"; reason: string }
  | { kind: "signed-out" }
  | { kind: "stopped" };

export interface AuthProvider {
  /** the access token held now (in memory), or null */
  accessToken(): string | null;
  /** when it expires (ms since the epoch) */
  expiresAt(): number;
  /** a fresh access token over REST (rotating the refresh token); null: signed out */
  refresh(): Promise<string | null>;
}

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface ClientOptions {
  url: string;
  auth: AuthProvider;
  /** REST history of a conversation, all pages, ascending seq */
  loadHistory(conversationId: string): Promise<Message[]>;
  onSignedOut?(): void;
  socketFactory?: SocketFactory;
  timers?: Timers;
  now?(): number;
  random?(): number;
  newId?(): string;
  /** refresh this long before the access token expires */
  refreshLeadMs?: number;
  /** send an app-level ping after this much silence; reconnect if nothing comes back */
  idleMs?: number;
  pongTimeoutMs?: number;
}

interface Unacked {
  conversationId: string;
  messageId: string;
  content: string;
}

type RequestInfo =
  | { kind: "send"; conversationId: string; messageId: string }
  | { kind: "resume"; conversationId: string }
  | { kind: "cancel"; conversationId: string }
  | { kind: "auth" }
  | { kind: "ping" };

const DEFAULT_LIMITS: Limits = {
  maxFrameBytes: 65536,
  maxContentChars: 8000,
  maxConcurrentTurns: 3,
  chatSendPerMinute: 20,
};

const browserTimers: Timers = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (h) => globalThis.clearTimeout(h as ReturnType<typeof setTimeout>),
};

export class ChatClient {
  state: ConnectionState = { kind: "stopped" };
  limits: Limits = DEFAULT_LIMITS;
  readonly conversations = new Map<string, ConversationState>();

  private readonly opts: ClientOptions;
  private readonly timers: Timers;
  private readonly now: () => number;
  private readonly random: () => number;
  private readonly newId: () => string;
  private ws: SocketLike | null = null;
  private ready = false;
  private attempt = 0;
  private reconnectTimer: unknown = null;
  private refreshTimer: unknown = null;
  private idleTimer: unknown = null;
  private pongTimer: unknown = null;
  private drainDelayMs: number | null = null;
  private retryAfterMs: number | null = null;
  private online = true;
  private requestSeq = 0;
  private readonly requests = new Map<string, RequestInfo>();
  private readonly unacked = new Map<string, Unacked>();
  private readonly open = new Set<string>();
  private readonly stateListeners = new Set<(s: ConnectionState) => void>();

  constructor(opts: ClientOptions) {
    this.opts = opts;
    this.timers = opts.timers ?? browserTimers;
    this.now = opts.now ?? (() => Date.now());
    this.random = opts.random ?? Math.random;
    this.newId = opts.newId ?? (() => crypto.randomUUID());
  }

  // ---- public surface ----------------------------------------------------------------

  onState(fn: (s: ConnectionState) => void): () => void {
    this.stateListeners.add(fn);
    return () => this.stateListeners.delete(fn);
  }

  start(): void {
    if (this.state.kind !== "stopped") return;
    this.connect();
  }

  /** Close for good (sign-out, leaving the page). */
  stop(): void {
    this.clearTimers();
    this.setState({ kind: "stopped" });
    this.dropSocket();
  }

  /** The browser's online/offline events. */
  setOnline(online: boolean): void {
    if (online === this.online) return;
    this.online = online;
    if (this.state.kind === "stopped" || this.state.kind === "signed-out") return;
    if (!online) {
      this.clearTimers();
      this.dropSocket();
      this.setState({ kind: "offline", reason: "You are offline." });
    } else {
      this.attempt = 0;
      this.connect();
    }
  }

  /** Start following a conversation: load its history, then resume it on the socket. */
  async openConversation(id: string): Promise<ConversationState> {
    const conv = this.conversation(id);
    this.open.add(id);
    if (!conv.loaded) {
      conv.setHistory(await this.opts.loadHistory(id));
    }
    if (this.ready) this.resume(conv);
    return conv;
  }

  closeConversation(id: string): void {
    this.open.delete(id);
  }

  conversation(id: string): ConversationState {
    let conv = this.conversations.get(id);
    if (!conv) {
      conv = new ConversationState(id);
      this.conversations.set(id, conv);
    }
    return conv;
  }

  /** Send a message; returns its messageId (the idempotency key, kept on re-sends). */
  send(conversationId: string, content: string): string {
    const messageId = this.newId();
    const conv = this.conversation(conversationId);
    conv.addPending(messageId, content);
    const u: Unacked = { conversationId, messageId, content };
    this.unacked.set(messageId, u);
    if (this.ready) this.sendChat(u);
    return messageId;
  }

  /** Stop the answer streaming in this conversation (chat.cancel). */
  cancel(conversationId: string): boolean {
    const live = this.conversations.get(conversationId)?.streaming();
    if (!live?.id || !this.ready) return false;
    this.emit({ type: "chat.cancel", data: { conversationId, messageId: live.id } }, {
      kind: "cancel",
      conversationId,
    });
    return true;
  }

  // ---- connection --------------------------------------------------------------------

  private setState(s: ConnectionState): void {
    this.state = s;
    for (const fn of this.stateListeners) fn(s);
  }

  private clearTimers(): void {
    for (const t of [this.reconnectTimer, this.refreshTimer, this.idleTimer, this.pongTimer]) {
      if (t !== null) this.timers.clearTimeout(t);
    }
    this.reconnectTimer = this.refreshTimer = this.idleTimer = this.pongTimer = null;
  }

  private dropSocket(): void {
    const ws = this.ws;
    this.ws = null;
    this.ready = false;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        ws.close(1000, "client closing");
      } catch {
        // already closed
      }
    }
  }

  private connect(): void {
    if (!this.online) {
      this.setState({ kind: "offline", reason: "You are offline." });
      return;
    }
    const token = this.opts.auth.accessToken();
    if (token === null || this.opts.auth.expiresAt() - this.now() < 5000) {
      void this.refreshThen(() => this.connect());
      return;
    }
    this.dropSocket();
    this.setState({ kind: "connecting" });
    const factory: SocketFactory =
      this.opts.socketFactory ?? ((url, protocols) => new WebSocket(url, protocols) as SocketLike);
    let ws: SocketLike;
    try {
      ws = factory(this.opts.url, ["chat.v1", `bearer.${token}`]);
    } catch {
      this.scheduleReconnect("could not open the connection");
      return;
    }
    this.ws = ws;
    this.armIdle();
    ws.onmessage = (ev) => this.onMessage(ev.data);
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.ready = false;
      this.onClose(ev.code, ev.reason);
    };
    ws.onerror = () => undefined; // a close follows
  }

  private async refreshThen(next: () => void): Promise<void> {
    this.setState({ kind: "connecting" });
    let token: string | null;
    try {
      token = await this.opts.auth.refresh();
    } catch {
      this.scheduleReconnect("could not reach the server");
      return;
    }
    if (this.state.kind === "stopped") return;
    if (token === null) {
      this.signedOut();
      return;
    }
    next();
  }

  private signedOut(): void {
    this.clearTimers();
    this.dropSocket();
    this.setState({ kind: "signed-out" });
    this.opts.onSignedOut?.();
  }

  private onClose(code: number, reason: string): void {
    this.clearTimers();
    if (this.state.kind === "stopped" || this.state.kind === "signed-out") return;
    const rule = closeRule(code);
    switch (rule.action) {
      case "sign-in":
        this.signedOut();
        return;
      case "stop":
        this.setState({ kind: "offline", reason: `Disconnected: ${rule.meaning}. Reload the page to reconnect.` });
        return;
      case "refresh":
        void this.refreshThen(() => this.connect());
        return;
      default: {
        let delay: number | undefined;
        if (code === 1012 && this.drainDelayMs !== null) delay = this.drainDelayMs;
        if (code === 4029 && this.retryAfterMs !== null) delay = this.retryAfterMs;
        this.drainDelayMs = null;
        this.scheduleReconnect(reason || rule.meaning, delay);
      }
    }
  }

  private scheduleReconnect(reason: string, delayMs?: number): void {
    if (!this.online) {
      this.setState({ kind: "offline", reason: "You are offline." });
      return;
    }
    const attempt = this.attempt++;
    const delay = Math.max(delayMs ?? 0, backoffDelay(attempt, this.random));
    this.setState({ kind: "reconnecting", at: this.now() + delay, attempt, reason });
    this.reconnectTimer = this.timers.setTimeout(() => {
      this.reconnectTimer = null;
      this.connect();
    }, delay);
  }

  private scheduleRefresh(): void {
    if (this.refreshTimer !== null) this.timers.clearTimeout(this.refreshTimer);
    // a minute before expiry, or at three quarters of a shorter life
    const left = this.opts.auth.expiresAt() - this.now();
    const lead = Math.min(this.opts.refreshLeadMs ?? 60_000, left / 4);
    const delay = Math.max(1000, left - lead);
    this.refreshTimer = this.timers.setTimeout(() => {
      this.refreshTimer = null;
      void this.refreshInBand();
    }, delay);
  }

  private async refreshInBand(): Promise<void> {
    let token: string | null;
    try {
      token = await this.opts.auth.refresh();
    } catch {
      this.refreshTimer = this.timers.setTimeout(() => void this.refreshInBand(), 5000);
      return;
    }
    if (token === null) {
      this.signedOut();
      return;
    }
    if (this.ready) this.emit({ type: "auth.refresh", data: { accessToken: token } }, { kind: "auth" });
    this.scheduleRefresh();
  }

  private armIdle(): void {
    if (this.idleTimer !== null) this.timers.clearTimeout(this.idleTimer);
    if (this.pongTimer !== null) {
      this.timers.clearTimeout(this.pongTimer);
      this.pongTimer = null;
    }
    this.idleTimer = this.timers.setTimeout(() => {
      this.idleTimer = null;
      if (!this.ready) {
        // opened (or opening) but no session.ready: treat it as lost
        const ws = this.ws;
        this.dropSocket();
        if (ws) this.onClose(1006, "no answer from the server");
        return;
      }
      this.emit({ type: "ping" }, { kind: "ping" });
      this.pongTimer = this.timers.setTimeout(() => {
        this.pongTimer = null;
        // nothing came back: the link is dead
        const ws = this.ws;
        this.dropSocket();
        if (ws) this.onClose(1006, "no answer to ping");
      }, this.opts.pongTimeoutMs ?? 10_000);
    }, this.opts.idleMs ?? 25_000);
  }

  // ---- frames out --------------------------------------------------------------------

  private emit(frame: { type: string; data?: unknown }, info: RequestInfo): string {
    const requestId = `r-${++this.requestSeq}`;
    this.requests.set(requestId, info);
    if (this.requests.size > 500) {
      const oldest = this.requests.keys().next().value;
      if (oldest !== undefined) this.requests.delete(oldest);
    }
    this.ws?.send(JSON.stringify({ ...frame, requestId }));
    return requestId;
  }

  private sendChat(u: Unacked): void {
    this.emit(
      { type: "chat.send", data: { conversationId: u.conversationId, messageId: u.messageId, content: u.content } },
      { kind: "send", conversationId: u.conversationId, messageId: u.messageId },
    );
  }

  private resume(conv: ConversationState, withChunk = true): void {
    const point = conv.resumePoint();
    const data: { conversationId: string; lastMessageSeq: number; lastChunk?: number } = {
      conversationId: conv.id,
      lastMessageSeq: point.lastMessageSeq,
    };
    if (withChunk && point.lastChunk !== undefined) data.lastChunk = point.lastChunk;
    this.emit({ type: "chat.resume", data }, { kind: "resume", conversationId: conv.id });
  }

  // ---- frames in ---------------------------------------------------------------------

  private onMessage(raw: unknown): void {
    if (typeof raw !== "string") return;
    let frame: ServerFrame;
    try {
      frame = JSON.parse(raw) as ServerFrame;
    } catch {
      return;
    }
    this.armIdle();
    switch (frame.type) {
      case "session.ready": {
        this.limits = { ...DEFAULT_LIMITS, ...frame.data.limits };
        if (frame.requestId !== null && this.requests.get(frame.requestId)?.kind === "auth") {
          this.requests.delete(frame.requestId);
          return; // the answer to auth.refresh
        }
        this.ready = true;
        this.attempt = 0;
        this.retryAfterMs = null;
        this.setState({ kind: "connected" });
        this.scheduleRefresh();
        for (const id of this.open) {
          const conv = this.conversations.get(id);
          if (conv?.loaded) this.resume(conv);
        }
        for (const u of this.unacked.values()) this.sendChat(u);
        return;
      }
      case "chat.ack": {
        const u = this.unacked.get(frame.data.messageId);
        this.unacked.delete(frame.data.messageId);
        const conv = this.conversation(frame.data.conversationId);
        conv.applyAck(frame.data, u?.content ?? "");
        return;
      }
      case "chat.stream":
        this.conversation(frame.data.conversationId).applyStream(frame.data);
        return;
      case "chat.done": {
        const conv = this.conversation(frame.data.conversationId);
        if (!conv.applyDone(frame.data) && this.ready) this.resume(conv);
        return;
      }
      case "chat.message":
        this.conversation(frame.data.conversationId).applyMessage(frame.data);
        return;
      case "chat.resumed":
        if (frame.data.reset) void this.reload(frame.data.conversationId);
        return;
      case "error":
        this.onError(frame.requestId, frame.data);
        return;
      case "server.draining":
        this.drainDelayMs = frame.data.reconnectAfterMs;
        return;
      default:
        return;
    }
  }

  private async reload(conversationId: string): Promise<void> {
    const conv = this.conversation(conversationId);
    try {
      conv.setHistory(await this.opts.loadHistory(conversationId));
    } catch {
      return;
    }
    if (this.ready) this.resume(conv, false);
  }

  private onError(requestId: string | null, e: ErrorData): void {
    const info = requestId !== null ? this.requests.get(requestId) : undefined;
    if (e.retryAfterMs !== undefined) this.retryAfterMs = e.retryAfterMs;
    if (!info) return;
    if (info.kind === "send") {
      const u = this.unacked.get(info.messageId);
      const conv = this.conversation(info.conversationId);
      if (u) {
        // refused before the ack: nothing was stored
        this.unacked.delete(info.messageId);
        conv.dropPending(info.messageId);
        conv.addError(e, e.retryable || e.code === "DUPLICATE_CONTENT" ? u.content : undefined);
      } else {
        // after the ack (the upstream failed): a chat.done failed follows
        conv.addError(e, e.retryable ? conv.lastUserContent() : undefined);
      }
      return;
    }
    if (info.kind === "cancel" && e.code === "NOT_FOUND") return; // already finished
    if (info.kind === "resume" || info.kind === "cancel") {
      const conv = this.conversation(info.conversationId);
      conv.addError(e, e.class === "UPSTREAM" && e.retryable ? conv.lastUserContent() : undefined);
    }
  }
}
