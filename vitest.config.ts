import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

const src = (path: string) => fileURLToPath(new URL(path, import.meta.url));

/** Workspace names resolve to their sources, so tests never need a build. */
const alias = {
  "@keen/agent-core/testing": src("./packages/agent-core/src/testing/index.ts"),
  "@keen/agent-core": src("./packages/agent-core/src/index.ts"),
  "@keen/gateway-kit/testing": src("./packages/gateway-kit/src/testing/index.ts"),
  "@keen/gateway-kit": src("./packages/gateway-kit/src/index.ts"),
  "@keen/server": src("./packages/server/src/index.ts"),
  "@keen/cli": src("./packages/cli/src/index.ts"),
};

const project = (name: string, root: string) => ({
  extends: true as const,
  test: { name, include: [`${root}/**/*.test.ts`] },
});

export default defineConfig({
  resolve: { alias },
  test: {
    exclude: ["**/node_modules/**", "**/dist/**"],
    testTimeout: 30_000,
    // Most tests wait on child processes (git, bwrap, PostgreSQL, servers) rather than compute:
    // three files at a time keep two cores busy (the default, cores - 1, leaves one idle).
    maxWorkers: 3,
    // A worker runs its files one after another in one process, instead of a new process and a
    // fresh import of every dependency per file (gateway-kit's files took 222 CPU-seconds instead
    // of 420; the whole run 853 s instead of 1,077 s on two cores). Files therefore leave the
    // process as they found it: each test restores the environment variables and globals it
    // changes, and closes the servers, databases and processes it starts.
    isolate: false,
    hookTimeout: 60_000,
    // Empty and migrated embedded databases, made once and copied by the suites.
    globalSetup: ["./test/setup/database-templates.ts"],
    projects: [
      project("agent-core", "packages/agent-core/src"),
      project("gateway-kit", "packages/gateway-kit/src"),
      project("server", "packages/server/src"),
      project("cli", "packages/cli/src"),
      project("examples", "examples"),
      project("smoke", "test/smoke"),
    ],
  },
});
