import { perSealedEntry, seal } from "../model/sealed.js";
import type { AgentState, TaskSnapshot } from "./task-state.js";

/**
 * Hands snapshots of the run's state to the host's `onSnapshot`, one at a time and in order. A
 * failing `onSnapshot` does not stop the run (the next snapshot may succeed).
 *
 * A snapshot is the state as it was when taken, and the run never changes it afterwards (see
 * `shareSnapshot`). Taking one costs in proportion to the number of messages, not their size.
 */
export class SnapshotQueue {
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly onSnapshot: ((snapshot: TaskSnapshot) => void | Promise<void>) | undefined) {}

  /** Queues a snapshot of `state` as it is now; resolves once it (and every earlier one) is handed over. */
  push(state: TaskSnapshot): Promise<void> {
    // Sealed whether or not a host takes snapshots: what is worked out per message is then kept.
    for (const agent of state.agents) for (const message of agent.messages) seal(message);
    const onSnapshot = this.onSnapshot;
    if (!onSnapshot) return Promise.resolve();
    const snapshot = shareSnapshot(state);
    this.queue = this.queue.then(() => onSnapshot(snapshot)).catch(() => {});
    return this.queue;
  }
}

/**
 * A snapshot of `state`: its own copy of everything but the agents' messages and journal
 * entries, which are sealed (frozen, see `model/sealed.ts`) and shared with the run and with
 * every later snapshot. A message or journal entry is never changed once recorded (a changed
 * one is a new object), so the snapshot still reads as it did when taken; and a host that tries
 * to change one gets a TypeError instead of changing the run's conversation.
 */
export function shareSnapshot(state: TaskSnapshot): TaskSnapshot {
  const { agents, ...rest } = state;
  return { ...(JSON.parse(JSON.stringify(rest)) as Omit<TaskSnapshot, "agents">), agents: agents.map(shareAgent) };
}

function shareAgent(agent: AgentState): AgentState {
  const { messages, journal, ...rest } = agent;
  return {
    ...(JSON.parse(JSON.stringify(rest)) as Omit<AgentState, "messages" | "journal">),
    messages: messages.map(seal),
    ...(journal ? { journal: journal.map(seal) } : {}),
  };
}

const entryJson = perSealedEntry((entry: object) => JSON.stringify(entry));

/**
 * A snapshot as JSON text, for a host that stores it: `readSnapshot(JSON.parse(text))` reads it
 * back. It is the JSON of `snapshot` (fields may come in another order); a message or journal
 * entry that an earlier snapshot of the run already held is not serialized again, so a host
 * storing every snapshot of a long conversation spends time on each new message, not on all of
 * them each time.
 *
 * @example
 * startTask({ ..., onSnapshot: (snapshot) => writeFile("run.json", serializeSnapshot(snapshot)) });
 */
export function serializeSnapshot(snapshot: TaskSnapshot): string {
  const { agents, ...rest } = snapshot;
  const agentTexts = agents.map((agent) => {
    const { messages, journal, ...fields } = agent;
    return withFields(JSON.stringify(fields), {
      messages: listJson(messages),
      ...(journal !== undefined ? { journal: listJson(journal) } : {}),
    });
  });
  return withFields(JSON.stringify(rest), { agents: `[${agentTexts.join(",")}]` });
}

/** A list's JSON; like JSON.stringify, a hole or an entry with no JSON form is written as null. */
function listJson(entries: readonly object[]): string {
  const texts: string[] = [];
  for (let i = 0; i < entries.length; i++) {
    const entry = entries[i];
    texts.push((entry !== null && typeof entry === "object" ? entryJson(entry) : JSON.stringify(entry)) ?? "null");
  }
  return `[${texts.join(",")}]`;
}

/** The JSON of an object (`objectJson`) with more fields, each given as JSON text, at its end. */
function withFields(objectJson: string, fields: Record<string, string>): string {
  let text = objectJson.slice(0, -1);
  for (const [name, json] of Object.entries(fields)) text += `${text.length > 1 ? "," : ""}${JSON.stringify(name)}:${json}`;
  return `${text}}`;
}
