import { afterEach, describe, expect, it } from "vitest";
import { reply, startMessagesServer, type MessagesServer } from "@keen/agent-core/testing";
import { scriptedTreePolicy, type ScriptedTask } from "./demo/scripted-tree.js";
import { terminalLine, terminalText } from "./terminal-text.js";
import { displayWidth, fitWidth } from "./terminal-width.js";
import { gitRepo, keenOnTerminal, OWN_SEQUENCES } from "./testing/keen-process.js";
import { visibleWidth } from "./tree/tree-view.js";

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

/** Hostile text: an OSC title change ended by BEL, a screen clear, NUL, a C1 CSI, CR, a bidi override. */
const HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x00\u009b31m\rX\u202egnp.exe";
const CJK_TITLE = "漢字のタイトルを表示する 🎉👩‍👩‍👧 é wide row";

describe("terminal text", () => {
  it("escapes every control character, C1 control, bidi override and lone surrogate, keeping newlines", () => {
    expect(terminalText(HOSTILE)).toBe("\\x1b]0;pwned\\x07\\x1b[2J\\x00\\x9b31m\\x0dX\\u202egnp.exe");
    expect(terminalText("a\nb\tc\x7f\u2066\u2028")).toBe("a\nb  c\\x7f\\u2066\\u2028");
    expect(terminalText("lone \ud83d end")).toBe("lone \\ud83d end");
    expect(terminalText("pair 🎉 ok")).toBe("pair 🎉 ok");
    expect(terminalLine("two\r\nlines\n")).toBe("two lines ");
  });

  it("measures columns and cuts between grapheme clusters", () => {
    expect(displayWidth("漢字")).toBe(4);
    expect(displayWidth("e\u0301")).toBe(1);
    expect(displayWidth("🎉")).toBe(2);
    expect(displayWidth("👩‍👩‍👧")).toBe(2);
    expect(fitWidth("漢字漢字", 5)).toBe("漢字…");
    expect(fitWidth("ab🎉cd", 4)).toBe("ab…");
    expect(fitWidth("a👩‍👩‍👧bc", 4)).toBe("a👩‍👩‍👧…");
    expect(fitWidth("a👩‍👩‍👧bc", 3)).toBe("a…");
    expect(fitWidth("ae\u0301e\u0301x", 3)).toBe("ae\u0301…");
    for (let width = 1; width < 30; width++) {
      const cut = fitWidth(CJK_TITLE, width);
      expect(displayWidth(cut)).toBeLessThanOrEqual(width);
      expect(cut).not.toMatch(/[\ud800-\udbff](?![\udc00-\udfff])|\ufffd/);
    }
  });
});

describe("keen run on a real terminal", { timeout: 120_000 }, () => {
  const tree: ScriptedTask = {
    title: "Hostile",
    instructions: "Hostile",
    subtasks: [
      {
        title: CJK_TITLE,
        instructions: "Write the wide file.",
        work: [reply.toolUse("write_file", { path: "wide-漢字.txt", content: "x\n" }, { text: `Writing 漢字 ${HOSTILE}` })],
      },
      {
        // Titles with control characters are refused by the lifecycle itself; the rest is not.
        title: "Evil title",
        instructions: "Write the evil file.",
        work: [reply.toolUse("write_file", { path: "evil\x1b[2J\u202e.txt", content: "x\n" }, { text: `model says ${HOSTILE}` })],
        // No NUL here: the summary goes into a commit message.
        summary: `Done ${HOSTILE.replace("\x00", "")}`,
      },
    ],
    summary: `All merged ${HOSTILE}`,
  };

  function expectNoForeignControls(out: string) {
    const rest = out.replace(OWN_SEQUENCES, "");
    // eslint-disable-next-line no-control-regex
    expect(rest).not.toMatch(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u0080-\u009f\u202a-\u202e\u2066-\u2069]/);
    expect(out).not.toContain("\ufffd");
  }

  it("shows hostile titles, model text and file names escaped, in plain lines and in the live view", async () => {
    server = await startMessagesServer({ policy: scriptedTreePolicy(tree) });
    const env = { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url };
    const vision = `Hostile \x1b]0;vision\x07`;

    const lines = await keenOnTerminal(["run", vision, "--repo", await gitRepo(), "--no-sandbox"], { ...env, KEEN_FORCE_TTY: "0" });
    expect(lines.exitCode, lines.stdout).toBe(0);
    expectNoForeignControls(lines.stdout);
    expect(lines.stdout).toContain("model says \\x1b]0;pwned\\x07\\x1b[2J\\x00\\x9b31m\\x0dX\\u202egnp.exe");
    expect(lines.stdout).toContain("keen ▸ Hostile \\x1b]0;vision\\x07");
    // Tool input is shown as JSON, which escapes C0 controls itself; the rest is escaped for the terminal.
    expect(lines.stdout).toContain(String.raw`"path":"evil\u001b[2J\u202e.txt"`);

    const live = await keenOnTerminal(["run", vision, "--repo", await gitRepo(), "--no-sandbox"], env, { columns: 200 });
    expect(live.exitCode, live.stdout).toBe(0);
    expect(live.stdout).toContain("\x1b[?25l");
    expectNoForeignControls(live.stdout);
    expect(live.stdout).toContain("Hostile \\x1b]0;vision\\x07");
    expect(live.stdout).toContain("All merged \\x1b]0;pwned");
  });

  it("never draws a live row wider than the terminal with CJK and emoji titles", async () => {
    server = await startMessagesServer({ policy: scriptedTreePolicy(tree, { delayMs: 20 }) });
    for (const columns of [50, 73]) {
      const result = await keenOnTerminal(["run", `${CJK_TITLE} vision 漢字漢字漢字漢字漢字漢字漢字漢字`, "--repo", await gitRepo(), "--no-sandbox"], { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url }, { columns });
      expect(result.exitCode, result.stdout).toBe(0);
      expect(result.stdout).not.toContain("\ufffd");
      // Every line of every frame, as drawn between the view's own cursor moves.
      const frames = result.stdout.slice(result.stdout.indexOf("\x1b[?25l")).split("\x1b[J").slice(0, -1);
      expect(frames.length).toBeGreaterThan(1);
      let rows = 0;
      for (const frame of frames) {
        const body = frame.split(/\x1b\[\d+A/).at(-1)!;
        for (const line of body.split(/\r?\n/)) {
          const plain = line.replace(/\x1b\[2K/g, "").replace(/\x1b\[\?25[lh]/g, "").replace(/^\r/, "");
          expect(visibleWidth(plain), `${columns} columns: ${plain}`).toBeLessThan(columns);
          rows += 1;
        }
      }
      expect(rows).toBeGreaterThan(frames.length);
      expect(result.stdout).toContain("漢字の");
    }
  });
});
