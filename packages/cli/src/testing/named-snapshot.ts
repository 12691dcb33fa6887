import { readSnapshot, type TaskSnapshot } from "@keen/agent-core";

/** For tests: a snapshot of a run with no agents yet, told apart from others by its vision. */
export function namedSnapshot(vision: string, runId = "run_file_test"): TaskSnapshot {
  return readSnapshot({
    version: 5,
    runId,
    vision,
    nextSeq: 0,
    limits: { maxDepth: 1, maxChildren: 2, maxAgents: 3, maxTurnsPerPhase: 5 },
    maxConcurrency: 2,
    onConflict: "resolve",
    tokensSpent: 0,
    agents: [],
  });
}
