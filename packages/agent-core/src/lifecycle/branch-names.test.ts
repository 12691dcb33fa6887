import { describe, expect, it } from "vitest";
import { agentIdForBranch, childBranch, subtaskLabel } from "./branch-names.js";

describe("branch names", () => {
  it("labels subtasks A..Z then AA, AB", () => {
    expect([0, 1, 25, 26, 27, 51, 52, 701, 702].map(subtaskLabel)).toEqual(["A", "B", "Z", "AA", "AB", "AZ", "BA", "ZZ", "AAA"]);
    expect(() => subtaskLabel(-1)).toThrow(RangeError);
  });

  it("names children from the parent, whatever the root branch is called", () => {
    expect(childBranch("main", 0, true)).toBe("summon-A");
    expect(childBranch("feature/x", 1, true)).toBe("summon-B");
    expect(childBranch("summon-A", 1, false)).toBe("summon-A-B");
    expect(childBranch("summon-A-B", 0, false)).toBe("summon-A-B-A");
  });

  it("derives agent ids from branches", () => {
    expect(agentIdForBranch("summon-A-B")).toBe("A-B");
    expect(agentIdForBranch("main")).toBe("root");
  });

  it("on a run branch, puts children beside it in <run branch>-agents/, the seed's names last", () => {
    expect(childBranch("keen/1a2b3c4d", 0, true, true)).toBe("keen/1a2b3c4d-agents/summon-A");
    expect(childBranch("keen/1a2b3c4d-agents/summon-A", 1, false, true)).toBe("keen/1a2b3c4d-agents/summon-A-B");
    expect(agentIdForBranch("keen/1a2b3c4d-agents/summon-A-B")).toBe("A-B");
    expect(agentIdForBranch("keen/1a2b3c4d")).toBe("root");
  });
});
