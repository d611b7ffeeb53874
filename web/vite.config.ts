/// <reference types="vitest" />
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// `npm run dev` serves the client on http://localhost:5173 and forwards the API and the
// WebSocket to a running `parley serve` (PARLEY_DEV_SERVER, default http://127.0.0.1:8000).
const target = process.env.PARLEY_DEV_SERVER ?? "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [react()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: false,
    // no inline <script>: the CSP allows scripts from this origin only
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 800,
  },
  server: {
    proxy: {
      "/api": { target, changeOrigin: true },
      "/ws": {
        target,
        ws: true,
        changeOrigin: true,
        // the server accepts WebSocket upgrades from its own origin only
        configure: (proxy) => {
          proxy.on("proxyReqWs", (req) => req.setHeader("origin", target));
        },
      },
    },
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
