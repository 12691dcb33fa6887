import { fileURLToPath } from "node:url";
import { defineConfig } from "tsup";
import { packageBuild } from "../../tsup.config.base.js";

/** In the bundle, `@anthropic-ai/sdk` is the Messages API client only: see src/bundle/anthropic-sdk.ts. */
const leanSdk = fileURLToPath(new URL("./src/bundle/anthropic-sdk.ts", import.meta.url));

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
    // The server side (`keen serve`, `migrate`, `worker`) is loaded from @keen/server as installed:
    // its database drivers and logger transports expect their own files on disk.
    noExternal: [/^(?!@keen\/server(\/|$))/],
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
