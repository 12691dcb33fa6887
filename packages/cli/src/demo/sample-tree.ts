import { reply } from "@keen/agent-core/testing";
import type { ScriptedTask } from "./scripted-tree.js";

/** The README up to its Usage section, which the children of the demo both fill in (and so conflict). */
const README_HEAD = "# greeter\n\nA tiny module that greets people.\n\n## Usage\n\n";

/** The sample project: a greeting module whose README has nothing under Usage yet. */
export const SAMPLE_FILES: Record<string, string> = {
  "README.md": `${README_HEAD}Nothing documented yet.\n`,
  "package.json": `${JSON.stringify({ name: "greeter", version: "1.0.0", type: "module", scripts: { test: "node --test" } }, null, 2)}\n`,
  "src/greet.js": "export function greet(name) {\n  return `Hello, ${name}!`;\n}\n",
  ".gitignore": "node_modules/\n",
};

export const DEMO_VISION = "Add farewell() next to greet(), test both, and document them in the README.";
export const DEMO_VALIDATION = "node --test";

const GREET_TEST = `import assert from "node:assert/strict";
import { test } from "node:test";
import { greet } from "../src/greet.js";

test("greet() says hello by name", () => {
  assert.equal(greet("Ada"), "Hello, Ada!");
});
`;

const FAREWELL = "export function farewell(name) {\n  return `Goodbye, ${name}!`;\n}\n";

const FAREWELL_TEST = `import assert from "node:assert/strict";
import { test } from "node:test";
import { farewell } from "../src/farewell.js";

test("farewell() says goodbye by name", () => {
  assert.equal(farewell("Ada"), "Goodbye, Ada!");
});
`;

const GREET_DOCS = '```js\nimport { greet } from "./src/greet.js";\ngreet("Ada"); // "Hello, Ada!"\n```\n';
const FAREWELL_DOCS = '```js\nimport { farewell } from "./src/farewell.js";\nfarewell("Ada"); // "Goodbye, Ada!"\n```\n';

const write = (path: string, content: string) => reply.toolUse("write_file", { path, content });

/**
 * The demo's tree: the root splits the work in two; the greeting branch hands its test to a
 * grandchild; both branches rewrite the README's Usage section, so the second merge conflicts
 * and the root resolves it by keeping both.
 *
 * ```
 * root (main)
 * ├─ A  Greeting: test and docs   summon-A
 * │  └─ A-A  Test greet()        summon-A-A
 * └─ B  Farewell function         summon-B   (README conflict, resolved by root)
 * ```
 */
export const DEMO_TREE: ScriptedTask = {
  title: DEMO_VISION,
  instructions: DEMO_VISION,
  subtasks: [
    {
      title: "Greeting: test and docs",
      instructions: "Make sure greet() is tested and document it under Usage in README.md.",
      subtasks: [
        {
          title: "Test greet()",
          instructions: "Write test/greet.test.js with node:test, checking greet() says hello by name.",
          work: [write("test/greet.test.js", GREET_TEST)],
          summary: "Added test/greet.test.js.",
        },
      ],
      work: [write("README.md", README_HEAD + GREET_DOCS)],
      summary: "Documented greet() in the README; its test came from A-A.",
    },
    {
      title: "Farewell function",
      instructions: "Add src/farewell.js exporting farewell(name), a test for it, and document it under Usage in README.md.",
      work: [write("src/farewell.js", FAREWELL), write("test/farewell.test.js", FAREWELL_TEST), write("README.md", README_HEAD + FAREWELL_DOCS)],
      summary: "Added farewell() with a test and README docs.",
    },
  ],
  resolve: [write("README.md", `${README_HEAD}${GREET_DOCS}\n${FAREWELL_DOCS}`)],
  resolveSummary: "Both branches rewrote README Usage; kept both examples.",
  summary: "greet() and farewell() are tested and documented.",
};
