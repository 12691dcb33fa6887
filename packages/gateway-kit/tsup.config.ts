import { defineConfig } from "tsup";
import { packageBuild } from "../../tsup.config.base.js";

/** One entry per feature, so a host imports only what it uses; shared code goes to common chunks. */
const features = ["auth", "credits", "billing", "budgets", "spend", "limits", "screening", "audit", "privacy", "db", "testing"];

export default defineConfig(
  packageBuild(
    {
      index: "src/index.ts",
      http: "src/http-error.ts",
      ...Object.fromEntries(features.map((name) => [name, `src/${name}/index.ts`])),
    },
    // Several entries share classes (errors, stores): split them into chunks so `instanceof` holds across
    // entries. The shims give the CommonJS build `import.meta.url`, which loads optional dependencies.
    { splitting: true, shims: true },
  ),
);
