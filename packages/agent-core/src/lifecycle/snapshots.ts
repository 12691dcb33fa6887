import { isSealed, perSealedEntry, seal } from "../model/sealed.js";
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
    const onSnapshot = this.onSnapshot;
    if (!onSnapshot) {
      // Sealed all the same (shareSnapshot seals them otherwise): what is worked out per message is then kept.
      for (const agent of state.agents) for (const message of agent.messages) seal(message);
      return Promise.resolve();
    }
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
    messages: messages.map(shared),
    ...(journal ? { journal: journal.map(shared) } : {}),
  };
}

/** The entry itself, sealed; a copy of one that cannot be (not JSON data only, see `sealed.ts`). */
function shared<T extends object>(entry: T): T {
  return isSealed(seal(entry)) ? entry : (JSON.parse(JSON.stringify(entry)) as T);
}

/**
 * A snapshot as JSON text, for a host that stores it: `readSnapshot(JSON.parse(text))` reads it
 * back. It is the JSON of `snapshot` (fields may come in another order); a message or journal
 * entry that an earlier snapshot of the run already held is not serialized again, so a host
 * storing every snapshot of a long conversation spends time on each new message, not on all of
 * them each time. A snapshot the host changed is written as `JSON.stringify` would write it.
 *
 * @example
 * startTask({ ..., onSnapshot: (snapshot) => writeFile("run.json", serializeSnapshot(snapshot)) });
 */
export function serializeSnapshot(snapshot: TaskSnapshot): string {
  return objectJson(snapshot, { agents: (agents) => listJson(agents, (agent) => objectJson(agent, AGENT_LISTS)) }) ?? "null";
}

/** The lists of an agent whose entries may be sealed, with their kept JSON. */
const AGENT_LISTS = { messages: (entries: unknown[]) => listJson(entries, entryJson), journal: (entries: unknown[]) => listJson(entries, entryJson) };

const entryJson = perSealedEntry((entry: object) => JSON.stringify(entry));

/**
 * `JSON.stringify(value)`, with the fields named in `lists` that hold plain arrays written by
 * their own function. Anything `JSON.stringify` treats its own way (not a plain object, a
 * `toJSON`) is left to it whole.
 */
function objectJson(value: unknown, lists: Record<string, (entries: unknown[]) => string>): string | undefined {
  if (!isPlainObject(value)) return JSON.stringify(value) as string | undefined;
  const fields: Record<string, unknown> = {};
  const texts: Array<[string, string]> = [];
  for (const name of Object.keys(value)) {
    const field = (value as Record<string, unknown>)[name];
    const write = Object.hasOwn(lists, name) ? lists[name] : undefined;
    if (write && isPlainArray(field)) texts.push([name, write(field)]);
    else fields[name] = field;
  }
  let text = JSON.stringify(fields).slice(0, -1);
  for (const [name, json] of texts) text += `${text.length > 1 ? "," : ""}${JSON.stringify(name)}:${json}`;
  return `${text}}`;
}

/** A list's JSON; like JSON.stringify, a hole or an entry with no JSON form is written as null. */
function listJson(entries: unknown[], write: (entry: object) => string | undefined): string {
  const texts: string[] = [];
  for (let i = 0; i < entries.length; i++) {
    const entry = entries[i];
    texts.push((entry !== null && typeof entry === "object" ? write(entry) : (JSON.stringify(entry) as string | undefined)) ?? "null");
  }
  return `[${texts.join(",")}]`;
}

function isPlainObject(value: unknown): value is object {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return false;
  const prototype = Object.getPrototypeOf(value);
  return (prototype === Object.prototype || prototype === null) && !("toJSON" in value);
}

function isPlainArray(value: unknown): value is unknown[] {
  return Array.isArray(value) && Object.getPrototypeOf(value) === Array.prototype && !("toJSON" in value);
}
