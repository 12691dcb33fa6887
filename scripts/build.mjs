#!/usr/bin/env node
// Builds the workspace packages in dependency order, running independent ones at once:
// agent-core and gateway-kit (neither imports the other), then server, then cli. With
// --typecheck, the whole repository's type-check (which reads sources, not builds) runs beside
// the later stages, which build one package at a time. Each command's output is printed whole when
// it finishes, so two never interleave.
import { spawn } from "node:child_process";

const stages = [["packages/agent-core", "packages/gateway-kit"], ["packages/server"], ["packages/cli"]];
const npm = process.platform === "win32" ? "npm.cmd" : "npm";

function run(label, args) {
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(npm, args, { stdio: ["ignore", "pipe", "pipe"], shell: process.platform === "win32" });
    const output = [];
    child.stdout.on("data", (chunk) => output.push(chunk));
    child.stderr.on("data", (chunk) => output.push(chunk));
    child.on("close", (code, signal) => {
      process.stdout.write(Buffer.concat(output));
      const seconds = ((Date.now() - started) / 1000).toFixed(1);
      console.log(`${label}: ${code === 0 ? "done" : `failed (${signal ?? `exit ${code}`})`} in ${seconds} s`);
      resolve(code === 0);
    });
  });
}

const buildStage = async (stage) => (await Promise.all(stage.map((workspace) => run(`build ${workspace}`, ["run", "build", "--workspace", workspace])))).every(Boolean);

const [first, ...rest] = stages;
let ok = await buildStage(first);
// The later stages build one package at a time: the type-check takes the other core.
const checked = ok && process.argv.includes("--typecheck") ? run("typecheck", ["run", "typecheck"]) : Promise.resolve(true);
for (const stage of rest) if (ok) ok = await buildStage(stage);
ok = (await checked) && ok;
process.exit(ok ? 0 : 1);
