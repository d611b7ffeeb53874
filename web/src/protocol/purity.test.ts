import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

// The protocol client stays free of React and of the DOM's rendering: plain modules only.
describe("web/src/protocol", () => {
  it("imports nothing but its own modules", () => {
    const dir = new URL(".", import.meta.url).pathname;
    const sources = readdirSync(dir).filter((f) => f.endsWith(".ts") && !f.endsWith(".test.ts"));
    expect(sources.length).toBeGreaterThanOrEqual(6);
    for (const file of sources) {
      const text = readFileSync(join(dir, file), "utf8");
      const imports = [...text.matchAll(/from\s+"([^"]+)"/g)].map((m) => m[1]);
      for (const spec of imports) expect(spec.startsWith("./"), `${file} imports ${spec}`).toBe(true);
    }
  });
});
