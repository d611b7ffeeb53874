import { useCallback, useEffect, useState } from "react";
import { Link, useLocation } from "wouter";

import { api, ApiError } from "../session";

export interface Conversation {
  id: string;
  title: string;
  createdAt: string;
  updatedAt: string;
  lastSeq: number;
}

interface Page {
  items: Conversation[];
  nextCursor: string | null;
}

const PAGE = 30;
/** a window event: a conversation got a new title (the chat view's heading follows) */
export const RENAMED = "parley:renamed";
/** a window event: a conversation got a new answer (it moves to the top of the list) */
export const ACTIVITY = "parley:activity";

function Item({
  c,
  active,
  onRenamed,
  onDeleted,
}: {
  c: Conversation;
  active: boolean;
  onRenamed: (c: Conversation) => void;
  onDeleted: (id: string) => void;
}) {
  const [mode, setMode] = useState<"view" | "rename" | "delete">("view");
  const [title, setTitle] = useState(c.title);
  const [error, setError] = useState<string | null>(null);

  if (mode === "rename") {
    return (
      <li className="conv editing">
        <form
          onSubmit={async (e) => {
            e.preventDefault();
            try {
              onRenamed(await api<Conversation>("PATCH", `/conversations/${c.id}`, { title }));
              setMode("view");
            } catch (err) {
              setError(err instanceof ApiError ? "That title cannot be used." : "Renaming failed.");
            }
          }}
        >
          <label className="sr-only" htmlFor={`rename-${c.id}`}>
            New title
          </label>
          <input
            id={`rename-${c.id}`}
            value={title}
            maxLength={200}
            autoFocus
            onChange={(e) => setTitle(e.target.value)}
            onKeyDown={(e) => e.key === "Escape" && setMode("view")}
          />
          <button type="submit">Save</button>
          <button type="button" className="quiet" onClick={() => setMode("view")}>
            Cancel
          </button>
          {error && <p role="alert">{error}</p>}
        </form>
      </li>
    );
  }
  if (mode === "delete") {
    return (
      <li className="conv confirming">
        <p>Delete “{c.title}”?</p>
        <button
          type="button"
          className="danger"
          autoFocus
          onClick={async () => {
            await api<void>("DELETE", `/conversations/${c.id}`).catch(() => undefined);
            onDeleted(c.id);
          }}
        >
          Delete
        </button>
        <button type="button" className="quiet" onClick={() => setMode("view")}>
          Keep
        </button>
      </li>
    );
  }
  return (
    <li className={active ? "conv active" : "conv"}>
      <Link href={`/c/${c.id}`} aria-current={active ? "page" : undefined} className="conv-link">
        {c.title || "Untitled"}
      </Link>
      <span className="conv-actions">
        <button type="button" className="icon" onClick={() => setMode("rename")} aria-label={`Rename ${c.title}`}>
          Rename
        </button>
        <button type="button" className="icon" onClick={() => setMode("delete")} aria-label={`Delete ${c.title}`}>
          Delete
        </button>
      </span>
    </li>
  );
}

export function Sidebar() {
  const [location, navigate] = useLocation();
  const [items, setItems] = useState<Conversation[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<string | null>(null);

  const load = useCallback(async (from: string | null) => {
    setLoading(true);
    try {
      const q = from ? `?limit=${PAGE}&cursor=${encodeURIComponent(from)}` : `?limit=${PAGE}`;
      const page = await api<Page>("GET", `/conversations${q}`);
      setItems((old) => (from ? [...old, ...page.items] : page.items));
      setCursor(page.nextCursor);
      setError(null);
    } catch {
      setError("The conversations could not be loaded.");
    } finally {
      setLoading(false);
    }
  }, []);

  useEffect(() => {
    void load(null);
  }, [load]);

  // newest first: a conversation that just got an answer moves to the top
  useEffect(() => {
    const onActivity = (e: Event) => {
      const id = (e as CustomEvent<{ id: string }>).detail.id;
      setItems((old) => {
        const hit = old.find((o) => o.id === id);
        return hit ? [hit, ...old.filter((o) => o.id !== id)] : old;
      });
    };
    window.addEventListener(ACTIVITY, onActivity);
    return () => window.removeEventListener(ACTIVITY, onActivity);
  }, []);

  const create = async () => {
    try {
      const c = await api<Conversation>("POST", "/conversations", {});
      setItems((old) => [c, ...old.filter((o) => o.id !== c.id)]);
      navigate(`/c/${c.id}`);
    } catch {
      setError("A new conversation could not be made.");
    }
  };

  return (
    <nav className="sidebar" aria-label="Conversations">
      <button type="button" className="new-conv" onClick={create}>
        New conversation
      </button>
      {error && <p role="alert">{error}</p>}
      <ul className="conv-list">
        {items.map((c) => (
          <Item
            key={c.id}
            c={c}
            active={location === `/c/${c.id}`}
            onRenamed={(n) => {
              setItems((old) => old.map((o) => (o.id === n.id ? n : o)));
              window.dispatchEvent(new CustomEvent(RENAMED, { detail: n }));
            }}
            onDeleted={(id) => {
              setItems((old) => old.filter((o) => o.id !== id));
              if (location === `/c/${id}`) navigate("/");
            }}
          />
        ))}
      </ul>
      {!loading && items.length === 0 && <p className="empty">No conversations yet.</p>}
      {cursor && (
        <button type="button" className="quiet more" disabled={loading} onClick={() => load(cursor)}>
          Show older conversations
        </button>
      )}
    </nav>
  );
}
