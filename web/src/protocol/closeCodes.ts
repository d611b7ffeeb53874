// What to do after the socket closed, by close code (CONTRACT.md section 4, "Close codes").

export type CloseAction =
  /** reconnect with backoff */
  | "reconnect"
  /** get a fresh access token over REST first, then reconnect */
  | "refresh"
  /** the session is gone: back to sign-in, no reconnect */
  | "sign-in"
  /** a fault that reconnecting will not fix: stay offline */
  | "stop";

export interface CloseRule {
  action: CloseAction;
  meaning: string;
}

export const CLOSE_CODES: Readonly<Record<number, CloseRule>> = {
  1000: { action: "reconnect", meaning: "closed" },
  1001: { action: "reconnect", meaning: "going away" },
  1006: { action: "reconnect", meaning: "connection lost" },
  1008: { action: "stop", meaning: "policy violation" },
  1009: { action: "stop", meaning: "frame too big" },
  1011: { action: "reconnect", meaning: "server error" },
  1012: { action: "reconnect", meaning: "server restarting" },
  1013: { action: "reconnect", meaning: "server full" },
  4001: { action: "refresh", meaning: "token expired" },
  4008: { action: "reconnect", meaning: "too slow to keep up" },
  4029: { action: "reconnect", meaning: "rate limited" },
  4500: { action: "sign-in", meaning: "signed out" },
  4504: { action: "stop", meaning: "too many connections for this user" },
  4509: { action: "stop", meaning: "too many invalid frames" },
};

/** Unknown codes are treated as a lost connection (reconnect with backoff). */
export function closeRule(code: number): CloseRule {
  return CLOSE_CODES[code] ?? { action: "reconnect", meaning: `closed (${code})` };
}
