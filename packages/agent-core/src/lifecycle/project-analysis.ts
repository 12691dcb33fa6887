import type { Workspace } from "../workspace/workspace.js";

export interface ProjectAnalysis {
  /** Files, gitignore-aware, at most `maxFiles`. */
  files: string[];
  /** True when the repository holds more files than listed. */
  truncated: boolean;
  languages: string[];
  packageManagers: string[];
  /** Commands that likely run the project's tests. */
  testCommands: string[];
  readme: string | null;
}

const LANGUAGES: Record<string, string> = {
  ".ts": "TypeScript", ".tsx": "TypeScript", ".js": "JavaScript", ".jsx": "JavaScript", ".mjs": "JavaScript", ".cjs": "JavaScript",
  ".py": "Python", ".rs": "Rust", ".go": "Go", ".java": "Java", ".kt": "Kotlin", ".rb": "Ruby", ".php": "PHP",
  ".c": "C", ".h": "C", ".cpp": "C++", ".cc": "C++", ".cs": "C#", ".swift": "Swift", ".scala": "Scala", ".sh": "Shell",
};

const MANIFESTS: Array<[file: string, manager: string]> = [
  ["package-lock.json", "npm"], ["pnpm-lock.yaml", "pnpm"], ["yarn.lock", "yarn"], ["bun.lockb", "bun"],
  ["Cargo.toml", "cargo"], ["go.mod", "go"], ["pyproject.toml", "python"], ["requirements.txt", "pip"],
  ["pom.xml", "maven"], ["build.gradle", "gradle"], ["Gemfile", "bundler"], ["composer.json", "composer"], ["Makefile", "make"],
];

/** Largest README or package.json the analysis reads. */
const MANIFEST_MAX_BYTES = 1024 * 1024;

/**
 * What an agent is told about a repository before it starts: a capped file list, the
 * languages and package managers in use, likely test commands and the README's opening. Never
 * fails over one file: an unreadable README or package.json (a symlink leaving the repository, a
 * FIFO, an oversized file) is left out, and files are only read through the workspace, which
 * never follows a link out of it.
 *
 * @example
 * const analysis = await analyzeProject(await LocalWorkspace.open("."));
 * console.log(formatAnalysis(analysis));
 */
export async function analyzeProject(
  workspace: Pick<Workspace, "listFiles" | "readFile">,
  options: { maxFiles?: number; readmeChars?: number; files?: readonly string[] } = {},
): Promise<ProjectAnalysis> {
  const maxFiles = options.maxFiles ?? 300;
  // `files`: the workspace's files as `listFiles` lists them, already at hand.
  const listed = options.files ? options.files.slice(0, maxFiles + 1) : await workspace.listFiles({ limit: maxFiles + 1 });
  const files = listed.slice(0, maxFiles);
  const present = new Set(listed);

  const counts = new Map<string, number>();
  for (const file of listed) {
    const dot = file.lastIndexOf(".");
    const language = dot >= 0 ? LANGUAGES[file.slice(dot).toLowerCase()] : undefined;
    if (language) counts.set(language, (counts.get(language) ?? 0) + 1);
  }
  const languages = [...counts.entries()].sort((a, b) => b[1] - a[1]).map(([language]) => language);
  const packageManagers = MANIFESTS.filter(([file]) => present.has(file)).map(([, manager]) => manager);

  const testCommands: string[] = [];
  if (present.has("package.json")) {
    try {
      const pkg = JSON.parse(await workspace.readFile("package.json", { maxBytes: MANIFEST_MAX_BYTES })) as { scripts?: Record<string, string> };
      if (pkg.scripts?.test) testCommands.push(`${packageManagers.find((m) => ["pnpm", "yarn", "bun"].includes(m)) ?? "npm"} test`);
    } catch {
      // An unreadable package.json just means no detected test command.
    }
  }
  if (present.has("Cargo.toml")) testCommands.push("cargo test");
  if (present.has("go.mod")) testCommands.push("go test ./...");
  if (present.has("pyproject.toml") || present.has("requirements.txt")) testCommands.push("pytest");
  if (present.has("Makefile")) testCommands.push("make test");

  const readmeName = listed.find((file) => /^readme(\.[a-z]+)?$/i.test(file));
  let readme: string | null = null;
  if (readmeName) {
    try {
      const text = await workspace.readFile(readmeName, { maxBytes: MANIFEST_MAX_BYTES });
      const limit = options.readmeChars ?? 2_000;
      readme = text.length > limit ? `${text.slice(0, limit)}\n…` : text;
    } catch {
      // A README that is a link out of the repository, a FIFO, huge or unreadable is simply not shown.
    }
  }
  return { files, truncated: listed.length > maxFiles, languages, packageManagers, testCommands, readme };
}

/** The analysis as text for a prompt. */
export function formatAnalysis(analysis: ProjectAnalysis): string {
  const parts = [
    `Files (${analysis.files.length}${analysis.truncated ? "+, list cut" : ""}):`,
    analysis.files.map((file) => `  ${file}`).join("\n") || "  (empty repository)",
    `Languages: ${analysis.languages.join(", ") || "unknown"}`,
    `Package managers: ${analysis.packageManagers.join(", ") || "none detected"}`,
    `Test commands: ${analysis.testCommands.join(", ") || "none detected"}`,
  ];
  if (analysis.readme) parts.push(`README (opening):\n${analysis.readme}`);
  return parts.join("\n");
}
