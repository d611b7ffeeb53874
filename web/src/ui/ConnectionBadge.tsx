import type { ConnectionState } from "../protocol/client";
import { useCountdown } from "./hooks";

export function ConnectionBadge({ state }: { state: ConnectionState }) {
  const left = useCountdown(state.kind === "reconnecting" ? state.at : null);
  let text: string;
  switch (state.kind) {
    case "connected":
      text = "Connected";
      break;
    case "connecting":
      text = "Connecting…";
      break;
    case "reconnecting":
      text = left > 0 ? `Reconnecting in ${left} s` : "Reconnecting…";
      break;
    case "offline":
      text = `Offline. ${state.reason}`;
      break;
    default:
      text = "Not connected";
  }
  return (
    <span className={`conn conn-${state.kind}`} role="status" data-state={state.kind}>
      <span className="conn-dot" aria-hidden="true" />
      {text}
    </span>
  );
}
