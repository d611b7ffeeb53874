// The wire shapes of chat.v1 (docs/PROTOCOL.md, /work/shared/CONTRACT.md section 4).

export type Role = "user" | "assistant" | "system";
export type MessageStatus =
  | "streaming"
  | "completed"
  | "cancelled"
  | "truncated"
  | "failed"
  | "interrupted";

/** A stored message: REST history and the WS `chat.message` frame alike. */
export interface Message {
  id: string;
  conversationId: string;
  seq: number;
  role: Role;
  content: string;
  status: MessageStatus;
  finishReason: string | null;
  createdAt: string;
}

export interface Limits {
  maxFrameBytes: number;
  maxContentChars: number;
  maxConcurrentTurns: number;
  chatSendPerMinute: number;
}

export interface SessionReady {
  userId: string;
  sessionId: string;
  connectionId: string;
  serverTime: string;
  limits: Limits;
}

export interface Ack {
  conversationId: string;
  messageId: string;
  userSeq: number;
  assistantMessageId: string;
  assistantSeq: number;
  duplicate: boolean;
}

export interface Stream {
  conversationId: string;
  messageId: string;
  seq: number;
  chunk: number;
  delta: string;
}

export interface Done {
  conversationId: string;
  messageId: string;
  seq: number;
  status: Exclude<MessageStatus, "streaming">;
  finishReason: string | null;
  lastChunk: number;
  usage: { inputTokens: number | null; outputTokens: number };
}

export interface Resumed {
  conversationId: string;
  replayed: number;
  live: boolean;
  reset: boolean;
}

export type ErrorClass = "VALIDATION" | "AUTH" | "RLIMIT" | "UPSTREAM" | "SERVER";

export interface ErrorData {
  code: string;
  class: ErrorClass;
  message: string;
  retryable: boolean;
  retryAfterMs?: number;
}

export type ServerFrame =
  | { type: "session.ready"; requestId: string | null; traceId: string; data: SessionReady }
  | { type: "chat.ack"; requestId: string | null; traceId: string; data: Ack }
  | { type: "chat.stream"; requestId: string | null; traceId: string; data: Stream }
  | { type: "chat.done"; requestId: string | null; traceId: string; data: Done }
  | { type: "chat.message"; requestId: string | null; traceId: string; data: Message }
  | { type: "chat.resumed"; requestId: string | null; traceId: string; data: Resumed }
  | { type: "error"; requestId: string | null; traceId: string; data: ErrorData }
  | {
      type: "server.draining";
      requestId: string | null;
      traceId: string;
      data: { reconnectAfterMs: number };
    }
  | { type: "pong"; requestId: string | null; traceId: string; data: Record<string, never> };

export type ClientFrame =
  | {
      type: "chat.send";
      requestId: string;
      data: { conversationId: string; messageId: string; content: string };
    }
  | { type: "chat.cancel"; requestId: string; data: { conversationId: string; messageId: string } };

/** The minimal WebSocket surface the client uses (the browser's, or a fake in tests). */
export interface SocketLike {
  readonly protocol: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type SocketFactory = (url: string, protocols: string[]) => SocketLike;
