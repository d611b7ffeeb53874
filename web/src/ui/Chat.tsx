import { useVirtualizer } from "@tanstack/react-virtual";
import { memo, useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from "react";

import { chatClient } from "../chat";
import type { ConversationState, ErrorLine, ViewMessage } from "../protocol/conversation";
import { errorText, retryHint } from "../protocol/errors";
import { api, ApiError } from "../session";
import { useCountdown, useFrameVersion } from "./hooks";
import { Markdown } from "./Markdown";
import { ACTIVITY, RENAMED } from "./Sidebar";

const STATUS_TEXT: Record<string, string> = {
  cancelled: "Stopped. The text so far is kept.",
  interrupted: "Interrupted: the server stopped before the answer was finished.",
  truncated: "Cut short: the answer reached its length limit.",
  failed: "Failed: the model did not finish this answer.",
};

const ANNOUNCE: Record<string, string> = {
  completed: "Answer complete",
  cancelled: "Answer stopped",
  interrupted: "Answer interrupted",
  truncated: "Answer cut short",
  failed: "Answer failed",
};

const MessageRow = memo(function MessageRow({ m }: { m: ViewMessage }) {
  const mine = m.role === "user";
  return (
    <article
      className={`msg ${mine ? "msg-user" : "msg-assistant"}`}
      aria-label={mine ? "You said" : "Parley answered"}
      data-seq={m.seq ?? undefined}
      data-status={m.status}
    >
      <div className="msg-who" aria-hidden="true">
        {mine ? "You" : "Parley"}
      </div>
      <div className="msg-body">
        {mine ? (
          <p className="plain text">{m.content}</p>
        ) : (
          <div className="md text">
            <Markdown text={m.content} />
          </div>
        )}
        {m.status === "streaming" && (
          <p className="msg-status writing">
            <span className="dots" aria-hidden="true" /> Writing…
          </p>
        )}
        {m.status === "sending" && <p className="msg-status">Sending…</p>}
        {STATUS_TEXT[m.status] && m.role === "assistant" && (
          <p className={`msg-status status-${m.status}`}>{STATUS_TEXT[m.status]}</p>
        )}
      </div>
    </article>
  );
});

function ErrorRow({ line, onRetry, onDismiss }: { line: ErrorLine; onRetry?: () => void; onDismiss: () => void }) {
  const t = errorText(line.code, line.serverMessage);
  const readyAt = line.retryAfterMs ? line.at + line.retryAfterMs : null;
  const wait = useCountdown(readyAt);
  return (
    <div className="error-line" data-code={line.code} role="alert">
      <p>
        <strong>{t.what}</strong> {t.todo} {retryHint(line.retryAfterMs)}
      </p>
      <div className="error-actions">
        {onRetry && (
          <button type="button" onClick={onRetry} disabled={wait > 0}>
            {wait > 0 ? `Retry in ${wait} s` : "Retry"}
          </button>
        )}
        <button type="button" className="quiet" onClick={onDismiss}>
          Dismiss
        </button>
      </div>
    </div>
  );
}

function MessageList({ conv, version }: { conv: ConversationState; version: number }) {
  const messages = useMemo(() => conv.messages(), [conv, version]);
  const scroller = useRef<HTMLDivElement>(null);
  const atBottom = useRef(true);
  const virtualizer = useVirtualizer({
    count: messages.length,
    getScrollElement: () => scroller.current,
    estimateSize: () => 120,
    overscan: 6,
    getItemKey: (i) => messages[i].key,
  });

  const onScroll = useCallback(() => {
    const el = scroller.current;
    if (el) atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
  }, []);

  // keep the newest text in view while the reader is at the bottom
  useLayoutEffect(() => {
    const el = scroller.current;
    if (el && atBottom.current && messages.length > 0) {
      el.scrollTop = el.scrollHeight;
    }
  });

  const items = virtualizer.getVirtualItems();
  return (
    <div
      className="messages"
      ref={scroller}
      onScroll={onScroll}
      tabIndex={0}
      aria-label="Messages"
      role="region"
      data-count={messages.length}
    >
      {messages.length === 0 && <p className="empty">No messages yet. Say hello below.</p>}
      <div className="messages-inner" style={{ height: virtualizer.getTotalSize() }}>
        {items.map((row) => (
          <div
            key={row.key}
            data-index={row.index}
            ref={virtualizer.measureElement}
            className="row"
            style={{ transform: `translateY(${row.start}px)` }}
          >
            <MessageRow m={messages[row.index]} />
          </div>
        ))}
      </div>
    </div>
  );
}

function Composer({ conv, streaming }: { conv: ConversationState; streaming: boolean }) {
  const client = chatClient();
  const [text, setText] = useState("");
  const limit = client?.limits.maxContentChars ?? 8000;
  const length = useMemo(() => [...text].length, [text]);
  const over = length > limit;
  const empty = text.trim().length === 0;
  const disabled = over || empty || streaming;

  const submit = () => {
    if (disabled || !client) return;
    client.send(conv.id, text);
    setText("");
  };

  return (
    <form
      className="composer"
      onSubmit={(e) => {
        e.preventDefault();
        submit();
      }}
    >
      <label htmlFor="composer-input" className="sr-only">
        Message
      </label>
      <textarea
        id="composer-input"
        value={text}
        rows={3}
        placeholder="Write a message. Enter sends, Shift+Enter starts a new line."
        aria-describedby="composer-count composer-help"
        aria-invalid={over}
        onChange={(e) => setText(e.target.value)}
        onKeyDown={(e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
            e.preventDefault();
            submit();
          }
        }}
      />
      <div className="composer-bar">
        <span id="composer-count" className={over ? "count over" : "count"}>
          {length.toLocaleString("en")} / {limit.toLocaleString("en")} characters
        </span>
        <span id="composer-help" className="sr-only">
          Enter sends, Shift+Enter starts a new line.
        </span>
        {streaming ? (
          <button type="button" className="stop" onClick={() => client?.cancel(conv.id)}>
            Stop
          </button>
        ) : (
          <button type="submit" disabled={disabled}>
            Send
          </button>
        )}
      </div>
      {over && (
        <p className="too-long" role="alert">
          Your message is {length.toLocaleString("en")} characters; the limit is{" "}
          {limit.toLocaleString("en")}. Remove {(length - limit).toLocaleString("en")} to send it.
        </p>
      )}
    </form>
  );
}

export function ChatView({ id }: { id: string }) {
  const client = chatClient();
  const [conv, setConv] = useState<ConversationState | null>(null);
  const [title, setTitle] = useState<string>("");
  const [failure, setFailure] = useState<string | null>(null);
  const [announcement, setAnnouncement] = useState("");
  const seenStreaming = useRef(new Set<string>());

  useEffect(() => {
    if (!client) return;
    let alive = true;
    setConv(null);
    setFailure(null);
    seenStreaming.current = new Set();
    api<{ title: string }>("GET", `/conversations/${id}`)
      .then((c) => alive && setTitle(c.title))
      .catch(() => undefined);
    client
      .openConversation(id)
      .then((c) => alive && setConv(c))
      .catch((e: unknown) => {
        if (!alive) return;
        setFailure(
          e instanceof ApiError && e.status === 404
            ? "This conversation does not exist (or was deleted)."
            : "The conversation could not be loaded. Reload the page to try again.",
        );
      });
    return () => {
      alive = false;
      client.closeConversation(id);
    };
  }, [client, id]);

  useEffect(() => {
    const onRenamed = (e: Event) => {
      const c = (e as CustomEvent<{ id: string; title: string }>).detail;
      if (c.id === id) setTitle(c.title);
    };
    window.addEventListener(RENAMED, onRenamed);
    return () => window.removeEventListener(RENAMED, onRenamed);
  }, [id]);

  useEffect(() => {
    document.title = title ? `${title} · Parley` : "Parley";
  }, [title]);

  const version = useFrameVersion(conv);
  const live = conv?.streaming();

  // announce a finished answer once (not every token)
  useEffect(() => {
    if (!conv) return;
    for (const m of conv.messages()) {
      if (m.role !== "assistant" || !m.id) continue;
      if (m.status === "streaming") seenStreaming.current.add(m.id);
      else if (seenStreaming.current.has(m.id)) {
        seenStreaming.current.delete(m.id);
        const words = m.content.length > 600 ? `${m.content.slice(0, 600)}…` : m.content;
        setAnnouncement(`${ANNOUNCE[m.status] ?? "Answer finished"}. ${words}`);
        window.dispatchEvent(new CustomEvent(ACTIVITY, { detail: { id } }));
      }
    }
  }, [conv, version, id]);

  if (failure) {
    return (
      <section className="chat" aria-label="Conversation">
        <p className="notice" role="alert">
          {failure}
        </p>
      </section>
    );
  }

  return (
    <section className="chat" aria-labelledby="chat-title">
      <h1 id="chat-title" className="chat-title">
        {title || "Conversation"}
      </h1>
      {conv ? <MessageList conv={conv} version={version} /> : <p className="loading">Loading…</p>}
      {conv && conv.errors.length > 0 && (
        <div className="errors">
          {conv.errors.map((line) => (
            <ErrorRow
              key={line.id}
              line={line}
              onDismiss={() => conv.dismissError(line.id)}
              onRetry={
                line.retryable && line.retryContent !== undefined && !live
                  ? () => {
                      conv.dismissError(line.id);
                      client?.send(conv.id, line.retryContent as string);
                    }
                  : undefined
              }
            />
          ))}
        </div>
      )}
      {conv && <Composer conv={conv} streaming={live !== undefined} />}
      <div className="sr-only" aria-live="polite" aria-atomic="true" data-testid="announcer">
        {announcement}
      </div>
    </section>
  );
}
