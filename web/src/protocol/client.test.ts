import { beforeEach, describe, expect, it } from "vitest";

import { BACKOFF_MAX_MS, BACKOFF_MIN_MS, backoffDelay } from "./backoff";
import { ChatClient, type ConnectionState } from "./client";
import { CLOSE_CODES, closeRule } from "./closeCodes";
import { ConversationState } from "./conversation";
import { ERROR_TEXT } from "./errors";
import type { Message, SocketLike } from "./types";

// ---- fakes ---------------------------------------------------------------------------

class FakeSocket implements SocketLike {
  protocol = "chat.v1";
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  sent: Array<{ type: string; requestId: string; data?: Record<string, unknown> }> = [];
  closed = false;
  constructor(
    readonly url: string,
    readonly protocols: string[],
  ) {}
  send(data: string): void {
    this.sent.push(JSON.parse(data));
  }
  close(): void {
    this.closed = true;
  }
  // server side
  frame(type: string, data: unknown, requestId: string | null = null): void {
    this.onmessage?.({ data: JSON.stringify({ type, requestId, traceId: "t".repeat(32), data }) });
  }
  ready(): void {
    this.frame("session.ready", {
      userId: "u",
      sessionId: "s",
      connectionId: "c",
      serverTime: "2026-01-01T00:00:00.000Z",
      limits: { maxFrameBytes: 65536, maxContentChars: 8000, maxConcurrentTurns: 3, chatSendPerMinute: 20 },
    });
  }
  serverClose(code: number, reason = ""): void {
    this.onclose?.({ code, reason });
  }
  ofType(type: string) {
    return this.sent.filter((f) => f.type === type);
  }
}

class FakeTimers {
  now = 1_000_000;
  private seq = 0;
  pending = new Map<number, { at: number; fn: () => void }>();
  setTimeout = (fn: () => void, ms: number): unknown => {
    const id = ++this.seq;
    this.pending.set(id, { at: this.now + ms, fn });
    return id;
  };
  clearTimeout = (h: unknown): void => {
    this.pending.delete(h as number);
  };
  /** run every timer due within `ms`, in order */
  advance(ms: number): void {
    const end = this.now + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.pending) if (e[1].at <= end && (!next || e[1].at < next[1].at)) next = e;
      if (!next) break;
      this.pending.delete(next[0]);
      this.now = next[1].at;
      next[1].fn();
    }
    this.now = end;
  }
  nextDelay(): number | undefined {
    let min: number | undefined;
    for (const e of this.pending.values()) if (min === undefined || e.at < min) min = e.at;
    return min === undefined ? undefined : min - this.now;
  }
}

const CONV = "0604b3eb-a691-4585-bb5c-97f921f03a97";

function stored(seq: number, role: "user" | "assistant", content: string, status: Message["status"] = "completed"): Message {
  return {
    id: `m-${seq}`,
    conversationId: CONV,
    seq,
    role,
    content,
    status,
    finishReason: status === "completed" && role === "assistant" ? "stop" : null,
    createdAt: "2026-01-01T00:00:00.000Z",
  };
}

const flush = () => new Promise((r) => setTimeout(r, 0));

interface Harness {
  client: ChatClient;
  sockets: FakeSocket[];
  timers: FakeTimers;
  states: ConnectionState[];
  refreshes: number;
  signedOut: number;
  token: string;
  expires: number;
  history: Message[];
  refreshResult: string | null;
  last(): FakeSocket;
}

function harness(random = 0.5): Harness {
  const timers = new FakeTimers();
  let ids = 0;
  const h: Harness = {
    sockets: [],
    timers,
    states: [],
    refreshes: 0,
    signedOut: 0,
    token: "tok-1",
    expires: timers.now + 15 * 60_000,
    history: [],
    refreshResult: "tok-2",
    last() {
      return this.sockets[this.sockets.length - 1];
    },
    client: undefined as unknown as ChatClient,
  };
  h.client = new ChatClient({
    url: "ws://parley.test/ws",
    auth: {
      accessToken: () => h.token,
      expiresAt: () => h.expires,
      refresh: async () => {
        h.refreshes += 1;
        if (h.refreshResult !== null) {
          h.token = h.refreshResult;
          h.expires = timers.now + 15 * 60_000;
        }
        return h.refreshResult;
      },
    },
    loadHistory: async () => h.history,
    onSignedOut: () => {
      h.signedOut += 1;
    },
    socketFactory: (url, protocols) => {
      const s = new FakeSocket(url, protocols);
      h.sockets.push(s);
      return s;
    },
    timers,
    now: () => timers.now,
    random: () => random,
    newId: () => `00000000-0000-4000-8000-${String(++ids).padStart(12, "0")}`,
  });
  h.client.onState((s) => h.states.push(s));
  return h;
}

// ---- tests ---------------------------------------------------------------------------

describe("backoff", () => {
  it("is full jitter between 0.5 s and min(20 s, 0.5 s x 2^n)", () => {
    expect(backoffDelay(0, () => 1)).toBe(BACKOFF_MIN_MS);
    expect(backoffDelay(1, () => 1)).toBe(1000);
    expect(backoffDelay(3, () => 1)).toBe(4000);
    expect(backoffDelay(10, () => 1)).toBe(BACKOFF_MAX_MS);
    expect(backoffDelay(30, () => 0)).toBe(BACKOFF_MIN_MS);
    expect(backoffDelay(5, () => 0.5)).toBe(Math.round(500 + 0.5 * (16000 - 500)));
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(i % 12);
      expect(d).toBeGreaterThanOrEqual(500);
      expect(d).toBeLessThanOrEqual(20000);
    }
  });
});

describe("close codes", () => {
  it("follows the contract's table", () => {
    for (const code of [1011, 1012, 1013, 4008, 4029, 1006]) expect(closeRule(code).action).toBe("reconnect");
    for (const code of [1008, 1009, 4504, 4509]) expect(closeRule(code).action).toBe("stop");
    expect(closeRule(4001).action).toBe("refresh");
    expect(closeRule(4500).action).toBe("sign-in");
    expect(closeRule(4999).action).toBe("reconnect");
    expect(Object.keys(CLOSE_CODES).length).toBeGreaterThanOrEqual(13);
  });
  it("has words for every error code of the contract", () => {
    const codes =
      "VALIDATION_FAILED UNKNOWN_TYPE PAYLOAD_TOO_LARGE AUTH_EXPIRED AUTH_INVALID NOT_FOUND CONVERSATION_BUSY DUPLICATE_CONTENT IDEMPOTENCY_CONFLICT RATE_LIMITED UPSTREAM_TIMEOUT UPSTREAM_ERROR UPSTREAM_UNAVAILABLE REPLAY_EXPIRED SERVER_ERROR SERVER_DRAINING".split(
        " ",
      );
    for (const c of codes) expect(ERROR_TEXT[c]?.what.length).toBeGreaterThan(5);
  });
});

describe("ChatClient connection", () => {
  let h: Harness;
  beforeEach(() => {
    h = harness();
  });

  it("offers chat.v1 and bearer.<token>", () => {
    h.client.start();
    expect(h.last().url).toBe("ws://parley.test/ws");
    expect(h.last().protocols).toEqual(["chat.v1", "bearer.tok-1"]);
    expect(h.client.state.kind).toBe("connecting");
    h.last().ready();
    expect(h.client.state.kind).toBe("connected");
  });

  it("reconnects with growing jittered backoff, and resets it once connected", () => {
    h = harness(1); // the top of each jitter range
    h.client.start();
    const delays: number[] = [];
    for (let i = 0; i < 8; i++) {
      h.last().serverClose(1006);
      expect(h.client.state.kind).toBe("reconnecting");
      delays.push(h.timers.nextDelay()!);
      h.timers.advance(delays[i]);
    }
    expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 16000, 20000, 20000]);
    expect(h.sockets.length).toBe(9);
    h.last().ready();
    h.last().serverClose(1011);
    expect(h.timers.nextDelay()).toBe(500);
    const s = h.client.state;
    expect(s.kind === "reconnecting" && s.at - h.timers.now).toBe(500);
  });

  it("does not reconnect on terminal codes", () => {
    for (const code of [1008, 1009, 4504, 4509]) {
      h = harness();
      h.client.start();
      h.last().ready();
      h.last().serverClose(code);
      expect(h.client.state.kind).toBe("offline");
      h.timers.advance(60_000);
      expect(h.sockets.length).toBe(1);
    }
  });

  it("goes to sign-in on 4500 and never reconnects", () => {
    h.client.start();
    h.last().ready();
    h.last().serverClose(4500, "AUTH_INVALID");
    expect(h.client.state.kind).toBe("signed-out");
    expect(h.signedOut).toBe(1);
    h.timers.advance(60_000);
    expect(h.sockets.length).toBe(1);
  });

  it("refreshes first on 4001, then reconnects with the new token", async () => {
    h.client.start();
    h.last().ready();
    h.last().serverClose(4001, "AUTH_EXPIRED");
    await flush();
    expect(h.refreshes).toBe(1);
    expect(h.sockets.length).toBe(2);
    expect(h.last().protocols).toEqual(["chat.v1", "bearer.tok-2"]);
  });

  it("goes to sign-in when the refresh is refused", async () => {
    h.refreshResult = null;
    h.client.start();
    h.last().serverClose(4001);
    await flush();
    expect(h.client.state.kind).toBe("signed-out");
    expect(h.signedOut).toBe(1);
  });

  it("honours retryAfterMs before reconnecting after 4029", () => {
    h.client.start();
    h.last().ready();
    h.last().frame("error", { code: "RATE_LIMITED", class: "RLIMIT", message: "slow down", retryable: true, retryAfterMs: 7000 });
    h.last().serverClose(4029, "RATE_LIMITED");
    expect(h.timers.nextDelay()).toBe(7000);
    h.timers.advance(6999);
    expect(h.sockets.length).toBe(1);
    h.timers.advance(1);
    expect(h.sockets.length).toBe(2);
  });

  it("honours server.draining's reconnectAfterMs on 1012", () => {
    h.client.start();
    h.last().ready();
    h.last().frame("server.draining", { reconnectAfterMs: 3000 });
    h.last().serverClose(1012, "SERVER_DRAINING");
    const s = h.client.state;
    expect(s.kind).toBe("reconnecting");
    expect(h.timers.nextDelay()).toBe(3000);
  });

  it("refreshes the access token before it expires, in band", async () => {
    h.client.start();
    h.last().ready();
    // the link stays alive meanwhile (a frame every 20 s)
    let left = 15 * 60_000 - 60_000 - 1;
    while (left > 0) {
      const step = Math.min(20_000, left);
      h.timers.advance(step);
      left -= step;
      h.last().frame("pong", {});
    }
    expect(h.sockets.length).toBe(1);
    expect(h.refreshes).toBe(0);
    h.timers.advance(1);
    await flush();
    expect(h.refreshes).toBe(1);
    const frames = h.last().ofType("auth.refresh");
    expect(frames.length).toBe(1);
    expect(frames[0].data).toEqual({ accessToken: "tok-2" });
    // its answer is a session.ready with our requestId: not a reconnect
    h.last().frame("session.ready", { userId: "u", sessionId: "s", connectionId: "c", serverTime: "", limits: {} }, frames[0].requestId);
    expect(h.last().ofType("chat.resume").length).toBe(0);
  });

  it("refreshes at three quarters of a short token life", async () => {
    h.expires = h.timers.now + 20_000;
    h.client.start();
    h.last().ready();
    h.timers.advance(14_999);
    expect(h.refreshes).toBe(0);
    h.timers.advance(1);
    await flush();
    expect(h.refreshes).toBe(1);
    expect(h.last().ofType("auth.refresh").length).toBe(1);
  });

  it("pings after silence and reconnects when no pong comes", () => {
    h.client.start();
    h.last().ready();
    h.timers.advance(25_000);
    expect(h.last().ofType("ping").length).toBe(1);
    h.timers.advance(10_000);
    expect(h.sockets[0].closed).toBe(true);
    expect(h.client.state.kind).toBe("reconnecting");
  });

  it("gives up on a socket that never says session.ready", () => {
    h.client.start();
    h.timers.advance(25_000);
    expect(h.sockets[0].closed).toBe(true);
    expect(h.client.state.kind).toBe("reconnecting");
    h.timers.advance(h.timers.nextDelay()!);
    expect(h.sockets.length).toBe(2);
  });

  it("goes offline with the browser and reconnects at once when it is back", () => {
    h.client.start();
    h.last().ready();
    h.client.setOnline(false);
    expect(h.client.state).toEqual({ kind: "offline", reason: "You are offline." });
    expect(h.sockets[0].closed).toBe(true);
    h.timers.advance(60_000);
    expect(h.sockets.length).toBe(1);
    h.client.setOnline(true);
    expect(h.sockets.length).toBe(2);
  });
});

describe("ChatClient turns and resume", () => {
  let h: Harness;
  beforeEach(() => {
    h = harness();
  });

  it("resumes each open conversation with the last whole seq and the last chunk", async () => {
    h.history = [stored(1, "user", "hi"), stored(2, "assistant", "hello")];
    h.client.start();
    h.last().ready();
    const conv = await h.client.openConversation(CONV);
    expect(h.last().ofType("chat.resume")[0].data).toEqual({ conversationId: CONV, lastMessageSeq: 2 });
    const id = h.client.send(CONV, "tell me");
    const send = h.last().ofType("chat.send")[0];
    expect(send.data).toEqual({ conversationId: CONV, messageId: id, content: "tell me" });
    h.last().frame("chat.ack", { conversationId: CONV, messageId: id, userSeq: 3, assistantMessageId: "a-4", assistantSeq: 4, duplicate: false }, send.requestId);
    h.last().frame("chat.stream", { conversationId: CONV, messageId: "a-4", seq: 4, chunk: 0, delta: "One" });
    h.last().frame("chat.stream", { conversationId: CONV, messageId: "a-4", seq: 4, chunk: 3, delta: " two three four" });
    expect(conv.get(4)?.content).toBe("One two three four");
    h.last().serverClose(1006);
    h.timers.advance(h.timers.nextDelay()!);
    h.last().ready();
    expect(h.last().ofType("chat.resume")[0].data).toEqual({ conversationId: CONV, lastMessageSeq: 3, lastChunk: 3 });
    // the replay repeats a chunk we hold (ignored), then goes on
    h.last().frame("chat.stream", { conversationId: CONV, messageId: "a-4", seq: 4, chunk: 3, delta: " four" });
    h.last().frame("chat.stream", { conversationId: CONV, messageId: "a-4", seq: 4, chunk: 4, delta: " five" });
    h.last().frame("chat.resumed", { conversationId: CONV, replayed: 1, live: true, reset: false });
    h.last().frame("chat.done", { conversationId: CONV, messageId: "a-4", seq: 4, status: "completed", finishReason: "stop", lastChunk: 4, usage: { inputTokens: 1, outputTokens: 5 } });
    expect(conv.get(4)).toMatchObject({ content: "One two three four five", status: "completed", whole: true });
    expect(conv.lastWholeSeq()).toBe(4);
  });

  it("re-sends a chat.send that got no ack, with the same messageId", async () => {
    h.client.start();
    h.last().ready();
    await h.client.openConversation(CONV);
    const id = h.client.send(CONV, "are you there?");
    h.last().serverClose(1006);
    h.timers.advance(h.timers.nextDelay()!);
    expect(h.last().ofType("chat.send").length).toBe(0); // not before session.ready
    h.last().ready();
    const again = h.last().ofType("chat.send");
    expect(again.length).toBe(1);
    expect(again[0].data?.messageId).toBe(id);
    h.last().frame("chat.ack", { conversationId: CONV, messageId: id, userSeq: 1, assistantMessageId: "a-2", assistantSeq: 2, duplicate: true }, again[0].requestId);
    h.last().ready(); // another reconnect: nothing left to re-send
    expect(h.last().ofType("chat.send").length).toBe(1);
  });

  it("sends what was written while disconnected once connected", async () => {
    h.client.start();
    const conv = await h.client.openConversation(CONV);
    h.client.send(CONV, "queued");
    expect(conv.messages().map((m) => m.status)).toEqual(["sending"]);
    expect(h.last().ofType("chat.send").length).toBe(0);
    h.last().ready();
    expect(h.last().ofType("chat.send").length).toBe(1);
  });

  it("a refused send is dropped and shown as an error with a retry", async () => {
    h.client.start();
    h.last().ready();
    const conv = await h.client.openConversation(CONV);
    h.client.send(CONV, "x");
    const send = h.last().ofType("chat.send")[0];
    h.last().frame("error", { code: "RATE_LIMITED", class: "RLIMIT", message: "rate", retryable: true, retryAfterMs: 4000 }, send.requestId);
    expect(conv.messages()).toEqual([]);
    expect(conv.errors[0]).toMatchObject({ code: "RATE_LIMITED", retryable: true, retryContent: "x", retryAfterMs: 4000 });
    h.last().ready();
    expect(h.last().ofType("chat.send").length).toBe(1); // not re-sent: it was refused
  });

  it("an upstream failure after the ack offers a retry of the last message", async () => {
    h.client.start();
    h.last().ready();
    const conv = await h.client.openConversation(CONV);
    const id = h.client.send(CONV, "hello");
    const send = h.last().ofType("chat.send")[0];
    h.last().frame("chat.ack", { conversationId: CONV, messageId: id, userSeq: 1, assistantMessageId: "a-2", assistantSeq: 2, duplicate: false }, send.requestId);
    h.last().frame("error", { code: "UPSTREAM_TIMEOUT", class: "UPSTREAM", message: "slow", retryable: true }, send.requestId);
    h.last().frame("chat.done", { conversationId: CONV, messageId: "a-2", seq: 2, status: "failed", finishReason: "error", lastChunk: -1, usage: { inputTokens: null, outputTokens: 0 } }, send.requestId);
    expect(conv.errors[0]).toMatchObject({ code: "UPSTREAM_TIMEOUT", retryContent: "hello" });
    expect(conv.get(2)).toMatchObject({ status: "failed", whole: true, content: "" });
  });

  it("cancel sends chat.cancel with the assistant message id", async () => {
    h.client.start();
    h.last().ready();
    await h.client.openConversation(CONV);
    expect(h.client.cancel(CONV)).toBe(false);
    const id = h.client.send(CONV, "go");
    h.last().frame("chat.ack", { conversationId: CONV, messageId: id, userSeq: 1, assistantMessageId: "a-2", assistantSeq: 2, duplicate: false });
    expect(h.client.cancel(CONV)).toBe(true);
    expect(h.last().ofType("chat.cancel")[0].data).toEqual({ conversationId: CONV, messageId: "a-2" });
  });

  it("a reload mid-answer takes the whole text so far from the resume", async () => {
    h.history = [stored(1, "user", "hi"), stored(2, "assistant", "checkpointed te", "streaming")];
    h.client.start();
    h.last().ready();
    const conv = await h.client.openConversation(CONV);
    expect(h.last().ofType("chat.resume")[0].data).toEqual({ conversationId: CONV, lastMessageSeq: 1 });
    h.last().frame("chat.stream", { conversationId: CONV, messageId: "m-2", seq: 2, chunk: 6, delta: "checkpointed text and more" });
    h.last().frame("chat.stream", { conversationId: CONV, messageId: "m-2", seq: 2, chunk: 7, delta: "!" });
    expect(conv.get(2)?.content).toBe("checkpointed text and more!");
  });

  it("a done whose last chunk is missing asks for the whole message", async () => {
    h.client.start();
    h.last().ready();
    const conv = await h.client.openConversation(CONV);
    const id = h.client.send(CONV, "go");
    h.last().frame("chat.ack", { conversationId: CONV, messageId: id, userSeq: 1, assistantMessageId: "a-2", assistantSeq: 2, duplicate: false });
    h.last().frame("chat.stream", { conversationId: CONV, messageId: "a-2", seq: 2, chunk: 0, delta: "A" });
    h.last().frame("chat.done", { conversationId: CONV, messageId: "a-2", seq: 2, status: "completed", finishReason: "stop", lastChunk: 2, usage: { inputTokens: 1, outputTokens: 3 } });
    expect(conv.get(2)?.whole).toBe(false);
    const resumes = h.last().ofType("chat.resume");
    expect(resumes[resumes.length - 1].data).toEqual({ conversationId: CONV, lastMessageSeq: 1, lastChunk: 0 });
    h.last().frame("chat.message", { ...stored(2, "assistant", "A B C"), id: "a-2" });
    expect(conv.get(2)).toMatchObject({ content: "A B C", whole: true });
  });

  it("a reset reloads the history over REST and resumes without a chunk", async () => {
    h.client.start();
    h.last().ready();
    await h.client.openConversation(CONV);
    h.history = [stored(1, "user", "a"), stored(2, "assistant", "b"), stored(3, "user", "c"), stored(4, "assistant", "partial", "streaming")];
    h.last().frame("chat.resumed", { conversationId: CONV, replayed: 0, live: true, reset: true });
    await flush();
    const resumes = h.last().ofType("chat.resume");
    expect(resumes[resumes.length - 1].data).toEqual({ conversationId: CONV, lastMessageSeq: 3 });
    expect(h.client.conversation(CONV).get(4)?.content).toBe("partial");
  });
});

describe("ConversationState", () => {
  it("does not double a frame it already holds, and keeps live text over an older checkpoint", () => {
    const c = new ConversationState(CONV);
    c.setHistory([stored(1, "user", "q")]);
    c.applyStream({ conversationId: CONV, messageId: "a", seq: 2, chunk: 0, delta: "x" });
    c.applyStream({ conversationId: CONV, messageId: "a", seq: 2, chunk: 1, delta: "y" });
    c.applyStream({ conversationId: CONV, messageId: "a", seq: 2, chunk: 1, delta: "y" });
    c.applyMessage({ ...stored(2, "assistant", "x", "streaming"), id: "a" });
    expect(c.get(2)?.content).toBe("xy");
    expect(c.resumePoint()).toEqual({ lastMessageSeq: 1, lastChunk: 1 });
    c.applyMessage({ ...stored(2, "assistant", "xyz"), id: "a" });
    expect(c.get(2)).toMatchObject({ content: "xyz", whole: true });
    expect(c.lastWholeSeq()).toBe(2);
  });

  it("notifies subscribers and orders messages by seq, unacked last", () => {
    const c = new ConversationState(CONV);
    let calls = 0;
    const off = c.subscribe(() => calls++);
    c.addPending("p", "later");
    c.applyMessage(stored(2, "assistant", "b"));
    c.applyMessage(stored(1, "user", "a"));
    expect(c.messages().map((m) => m.content)).toEqual(["a", "b", "later"]);
    expect(calls).toBe(3);
    off();
    c.dropPending("p");
    expect(calls).toBe(3);
    expect(c.lastUserContent()).toBe("a");
  });
});
