import { fileURLToPath } from "node:url";
import { defineConfig } from "tsup";
import { packageBuild } from "../../tsup.config.base.js";

/** In the bundle, `@anthropic-ai/sdk` is the Messages API client only: see src/bundle/anthropic-sdk.ts. */
const leanSdk = fileURLToPath(new URL("./src/bundle/anthropic-sdk.ts", import.meta.url));

/** Packages `keen`'s bundle loads from node_modules as installed (see noExternal below). */
const RUNTIME_PACKAGES = ["@electric-sql/pglite", "pino", "pg", "pg-boss", "stripe", "@node-rs/argon2", "bufferutil", "utf-8-validate"];

export default defineConfig([
  packageBuild({ index: "src/index.ts", main: "src/main.ts" }),
  // What `keen` runs: one bundle with the agent side's dependencies inlined, so a start resolves
  // and reads a handful of files instead of hundreds. Code that only some commands need (the SDK,
  // the server commands) stays in chunks loaded on first use.
  {
    entry: { main: "src/main.ts" },
    outDir: "bundle",
    format: ["esm"],
    target: "node20",
    platform: "node",
    splitting: true,
    treeshake: true,
    sourcemap: false,
    clean: true,
    dts: false,
    // The server side (`keen serve`, `migrate`, `worker`) is inlined too, in its own chunks, with
    // one copy of what it shares with the agent side (zod, kysely, execa, gateway-kit, agent-core):
    // a start then reads a few files instead of several hundred. What expects its own files on disk
    // stays installed: the embedded database (its WebAssembly and data), the logger (its transport
    // workers), and the drivers loaded only when configured (pg, pg-boss, Stripe, native add-ons).
    noExternal: [new RegExp(`^(?!(${RUNTIME_PACKAGES.map((name) => name.replace(/[/.]/g, "\\$&")).join("|")})(/|$))`)],
    external: RUNTIME_PACKAGES,
    esbuildPlugins: [
      {
        name: "lean-anthropic-sdk",
        setup(build) {
          build.onResolve({ filter: /^@anthropic-ai\/sdk$/ }, () => ({ path: leanSdk }));
        },
      },
    ],
    // Bundled CommonJS dependencies call require() for Node built-ins.
    banner: { js: 'import { createRequire as __keenCreateRequire } from "node:module"; const require = __keenCreateRequire(import.meta.url);' },
  },
]);
