// What the client holds of one conversation, and the rules that fold frames into it
// (docs/PROTOCOL.md sections 5 and 7). No React, no socket: plain data.

import type { Ack, Done, ErrorData, Message, MessageStatus, Role, Stream } from "./types";

export interface ViewMessage {
  /** Stable key: the server's id, or the client's messageId while unacked. */
  key: string;
  id: string | null;
  /** null while a user message waits for its ack */
  seq: number | null;
  role: Role;
  content: string;
  status: MessageStatus | "sending";
  finishReason: string | null;
  /** The last chunk held of a message in flight; undefined = the text held is not
   *  chunk-aligned (nothing yet, or a REST/replay copy): the next chat.stream replaces it. */
  chunk?: number;
  /** true once the message is held whole (finished and every chunk present) */
  whole: boolean;
}

export interface ErrorLine {
  id: number;
  code: string;
  errorClass: string;
  serverMessage: string;
  retryable: boolean;
  retryAfterMs?: number;
  /** when the error came (ms since the epoch): with retryAfterMs, when a retry may go */
  at: number;
  /** the text to send again when the user asks for a retry */
  retryContent?: string;
}

type Listener = () => void;

let errorIds = 0;

function fromStored(m: Message): ViewMessage {
  return {
    key: m.id,
    id: m.id,
    seq: m.seq,
    role: m.role,
    content: m.content,
    status: m.status,
    finishReason: m.finishReason,
    whole: m.status !== "streaming",
  };
}

export class ConversationState {
  readonly id: string;
  /** true once the history was loaded over REST */
  loaded = false;
  /** bumped on every change */
  version = 0;
  errors: ErrorLine[] = [];
  private readonly bySeq = new Map<number, ViewMessage>();
  private readonly pending = new Map<string, ViewMessage>();
  private cache: ViewMessage[] | null = null;
  private readonly listeners = new Set<Listener>();

  constructor(id: string) {
    this.id = id;
  }

  subscribe(fn: Listener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private changed(): void {
    this.version += 1;
    this.cache = null;
    for (const fn of this.listeners) fn();
  }

  /** Messages in order: stored ones by seq, then the unacked user messages. */
  messages(): ViewMessage[] {
    if (this.cache === null) {
      const seqs = [...this.bySeq.keys()].sort((a, b) => a - b);
      this.cache = seqs.map((s) => this.bySeq.get(s) as ViewMessage);
      for (const p of this.pending.values()) this.cache.push(p);
    }
    return this.cache;
  }

  get(seq: number): ViewMessage | undefined {
    return this.bySeq.get(seq);
  }

  /** The highest seq held whole with no hole below it (0: nothing). */
  lastWholeSeq(): number {
    let s = 0;
    while (this.bySeq.get(s + 1)?.whole) s += 1;
    return s;
  }

  /** What to put in chat.resume: the last whole seq, and the last chunk of the next one. */
  resumePoint(): { lastMessageSeq: number; lastChunk?: number } {
    const lastMessageSeq = this.lastWholeSeq();
    const next = this.bySeq.get(lastMessageSeq + 1);
    if (next && !next.whole && next.chunk !== undefined && next.chunk >= 0) {
      return { lastMessageSeq, lastChunk: next.chunk };
    }
    return { lastMessageSeq };
  }

  /** The assistant message still streaming, if any. */
  streaming(): ViewMessage | undefined {
    let found: ViewMessage | undefined;
    for (const m of this.bySeq.values()) {
      if (m.role === "assistant" && m.status === "streaming" && (!found || m.seq! > found.seq!)) {
        found = m;
      }
    }
    return found;
  }

  /** The whole history from REST replaces what is held (the unacked sends stay). */
  setHistory(items: Message[]): void {
    this.bySeq.clear();
    for (const m of items) this.bySeq.set(m.seq, fromStored(m));
    this.loaded = true;
    this.changed();
  }

  /** A stored message (`chat.message` in a replay): it replaces a partial copy. */
  applyMessage(m: Message): void {
    const held = this.bySeq.get(m.seq);
    if (held?.whole) return;
    if (
      held &&
      m.status === "streaming" &&
      held.chunk !== undefined &&
      held.content.length >= m.content.length
    ) {
      return; // a checkpoint older than what the live frames already gave us
    }
    this.bySeq.set(m.seq, fromStored(m));
    this.changed();
  }

  addPending(messageId: string, content: string): void {
    this.pending.set(messageId, {
      key: messageId,
      id: null,
      seq: null,
      role: "user",
      content,
      status: "sending",
      finishReason: null,
      whole: false,
    });
    this.changed();
  }

  dropPending(messageId: string): void {
    if (this.pending.delete(messageId)) this.changed();
  }

  hasPending(messageId: string): boolean {
    return this.pending.has(messageId);
  }

  applyAck(a: Ack, content: string): void {
    this.pending.delete(a.messageId);
    const user = this.bySeq.get(a.userSeq);
    if (!user?.whole) {
      this.bySeq.set(a.userSeq, {
        key: user?.key ?? a.messageId,
        id: user?.id ?? null,
        seq: a.userSeq,
        role: "user",
        content,
        status: "completed",
        finishReason: null,
        whole: true,
      });
    }
    if (!this.bySeq.has(a.assistantSeq)) {
      this.bySeq.set(a.assistantSeq, {
        key: a.assistantMessageId,
        id: a.assistantMessageId,
        seq: a.assistantSeq,
        role: "assistant",
        content: "",
        status: "streaming",
        finishReason: null,
        whole: false,
      });
    }
    this.changed();
  }

  /** Append rule: a chunk above the last one held is appended; otherwise ignored; a
   *  frame on a copy that is not chunk-aligned replaces it (it holds the whole text so far). */
  applyStream(s: Stream): void {
    const held = this.bySeq.get(s.seq);
    if (held?.whole) return;
    if (held && held.chunk !== undefined && s.chunk <= held.chunk) return;
    const content =
      held && held.chunk !== undefined ? held.content + s.delta : s.delta;
    this.bySeq.set(s.seq, {
      key: held?.key ?? s.messageId,
      id: s.messageId,
      seq: s.seq,
      role: "assistant",
      content,
      status: "streaming",
      finishReason: null,
      chunk: s.chunk,
      whole: false,
    });
    this.changed();
  }

  /** Returns false when the text held is not the whole answer (resume to get it). */
  applyDone(d: Done): boolean {
    const held = this.bySeq.get(d.seq);
    if (held?.whole) return true;
    const complete =
      held !== undefined &&
      (d.lastChunk === -1 ? held.content === "" || held.chunk === undefined : held.chunk === d.lastChunk);
    const emptyAnswer = d.lastChunk === -1;
    this.bySeq.set(d.seq, {
      key: held?.key ?? d.messageId,
      id: d.messageId,
      seq: d.seq,
      role: "assistant",
      content: emptyAnswer ? "" : (held?.content ?? ""),
      status: d.status,
      finishReason: d.finishReason,
      chunk: held?.chunk,
      whole: complete || emptyAnswer,
    });
    this.changed();
    return complete || emptyAnswer;
  }

  addError(e: ErrorData, retryContent?: string): ErrorLine {
    const line: ErrorLine = {
      id: ++errorIds,
      code: e.code,
      errorClass: e.class,
      serverMessage: e.message,
      retryable: e.retryable,
      retryAfterMs: e.retryAfterMs,
      at: Date.now(),
      retryContent,
    };
    this.errors = [...this.errors, line];
    this.changed();
    return line;
  }

  dismissError(id: number): void {
    this.errors = this.errors.filter((e) => e.id !== id);
    this.changed();
  }

  /** The content of the newest user message (what a retry sends again). */
  lastUserContent(): string | undefined {
    const list = this.messages();
    for (let i = list.length - 1; i >= 0; i--) {
      if (list[i].role === "user") return list[i].content;
    }
    return undefined;
  }
}
