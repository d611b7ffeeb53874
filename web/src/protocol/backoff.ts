// Exponential backoff with full jitter, bounded to [0.5 s, 20 s].

export const BACKOFF_MIN_MS = 500;
export const BACKOFF_MAX_MS = 20_000;

/**
 * Delay before reconnect attempt `attempt` (0 for the first): a uniform draw between
 * 0.5 s and min(20 s, 0.5 s x 2^attempt) ("full jitter", floored at 0.5 s so a
 * server that just went away is not hammered).
 */
export function backoffDelay(attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.max(0, attempt));
  return Math.round(BACKOFF_MIN_MS + random() * (ceiling - BACKOFF_MIN_MS));
}
