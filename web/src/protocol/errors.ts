// Every error code of the contract in words a person understands: what happened, what to do.

export interface ErrorText {
  what: string;
  todo: string;
}

export const ERROR_TEXT: Readonly<Record<string, ErrorText>> = {
  VALIDATION_FAILED: {
    what: "The message could not be read by the server.",
    todo: "Check it and send it again.",
  },
  UNKNOWN_TYPE: {
    what: "The server did not understand a request from this page.",
    todo: "Reload the page.",
  },
  PAYLOAD_TOO_LARGE: {
    what: "Your message is too long.",
    todo: "Shorten it and send it again.",
  },
  AUTH_EXPIRED: {
    what: "Your sign-in expired.",
    todo: "Sign in again.",
  },
  AUTH_INVALID: {
    what: "You are signed out.",
    todo: "Sign in again.",
  },
  NOT_FOUND: {
    what: "This conversation no longer exists.",
    todo: "Pick another conversation or start a new one.",
  },
  CONVERSATION_BUSY: {
    what: "An answer is still being written (or you have too many at once).",
    todo: "Wait for it to finish, then try again.",
  },
  DUPLICATE_CONTENT: {
    what: "You sent the same message a moment ago.",
    todo: "Wait a few seconds, or change the message.",
  },
  IDEMPOTENCY_CONFLICT: {
    what: "This message clashed with an earlier one.",
    todo: "Send it again.",
  },
  RATE_LIMITED: {
    what: "You are sending messages too fast.",
    todo: "Wait a moment, then try again.",
  },
  UPSTREAM_TIMEOUT: {
    what: "The model took too long to answer.",
    todo: "Try again.",
  },
  UPSTREAM_ERROR: {
    what: "The model failed while answering.",
    todo: "Try again.",
  },
  UPSTREAM_UNAVAILABLE: {
    what: "The model is not available right now.",
    todo: "Try again in a little while.",
  },
  REPLAY_EXPIRED: {
    what: "That answer is no longer stored.",
    todo: "Send your message again as a new one.",
  },
  SERVER_ERROR: {
    what: "Something went wrong on the server.",
    todo: "Try again.",
  },
  SERVER_DRAINING: {
    what: "The server is restarting.",
    todo: "It will reconnect by itself; then try again.",
  },
};

export function errorText(code: string, fallback?: string): ErrorText {
  return ERROR_TEXT[code] ?? { what: fallback || "Something went wrong.", todo: "Try again." };
}

/** "Wait 12 s" style hint from retryAfterMs, or "". */
export function retryHint(retryAfterMs?: number): string {
  if (retryAfterMs === undefined || retryAfterMs <= 0) return "";
  const s = Math.ceil(retryAfterMs / 1000);
  return `You can try again in ${s} s.`;
}
