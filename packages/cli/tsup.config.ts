import { defineConfig } from "tsup";
import { packageBuild } from "../../tsup.config.base.js";

export default defineConfig([
  packageBuild({ index: "src/index.ts", main: "src/main.ts" }),
  // What `keen` runs: one bundle with every dependency inlined, so a start resolves and reads a
  // handful of files instead of hundreds. Code that only some commands need (the SDK, the demo's
  // offline server) stays in chunks loaded on first use.
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
    noExternal: [/.*/],
    // Bundled CommonJS dependencies call require() for Node built-ins.
    banner: { js: 'import { createRequire as __keenCreateRequire } from "node:module"; const require = __keenCreateRequire(import.meta.url);' },
  },
]);
