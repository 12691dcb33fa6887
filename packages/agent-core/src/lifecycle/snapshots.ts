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
  const parts = snapshotParts(snapshot, entryJson);
  return parts === undefined ? "null" : (parts as string[]).join("");
}

/**
 * The bytes of {@link serializeSnapshot}'s text in UTF-8, for a host that writes snapshots to a
 * file or a socket. Each message and journal entry is encoded once over the run, like its JSON
 * in `serializeSnapshot`, so a long conversation's snapshot costs a copy of its bytes, not a
 * serialization and an encoding of its whole text.
 *
 * @example
 * startTask({ ..., onSnapshot: (snapshot) => writeFile("run.json", encodeSnapshot(snapshot)) });
 */
export function encodeSnapshot(snapshot: TaskSnapshot): Uint8Array {
  const parts = snapshotParts(snapshot, entryBytes);
  if (parts === undefined) return Buffer.from("null");
  // Adjacent text is encoded together: a list's brackets and commas are not a buffer each.
  const buffers: Uint8Array[] = [];
  let text = "";
  for (const part of parts) {
    if (typeof part === "string") {
      text += part;
      continue;
    }
    if (text) buffers.push(Buffer.from(text));
    text = "";
    buffers.push(part);
  }
  if (text) buffers.push(Buffer.from(text));
  return Buffer.concat(buffers);
}

/** Text and the kept form of entries, in order; `snapshotParts(s, entryJson)` joined is `serializeSnapshot(s)`. */
type Part = string | Uint8Array;

/** A snapshot's JSON as parts, each sealed entry as `entry` keeps it; undefined where JSON.stringify gives undefined. */
function snapshotParts<E extends Part>(snapshot: TaskSnapshot, entry: (value: object) => E | undefined): Array<string | E> | undefined {
  const out: Array<string | E> = [];
  const entries = (list: unknown[]) => listParts(list, entry, out);
  const agents = (list: unknown[]) => listParts(list, (agent) => (objectParts(agent, { messages: entries, journal: entries }, out) ? "" : undefined), out);
  return objectParts(snapshot, { agents }, out) ? out : undefined;
}

const entryJson = perSealedEntry((entry: object) => JSON.stringify(entry) as string | undefined);
const entryBytes = perSealedEntry((entry: object) => {
  const json = JSON.stringify(entry) as string | undefined;
  return json === undefined ? undefined : Buffer.from(json);
});

/**
 * Pushes `JSON.stringify(value)` onto `out`, with the fields named in `lists` that hold plain
 * arrays written by their own function. Anything `JSON.stringify` treats its own way (not a
 * plain object, a `toJSON`) is left to it whole. False, with nothing pushed, where
 * JSON.stringify would give undefined.
 */
function objectParts<E extends Part>(value: unknown, lists: Record<string, (entries: unknown[]) => void>, out: Array<string | E>): boolean {
  if (!isPlainObject(value)) {
    const json = JSON.stringify(value) as string | undefined;
    if (json === undefined) return false;
    out.push(json);
    return true;
  }
  const fields: Record<string, unknown> = {};
  const listed: Array<[string, unknown[]]> = [];
  for (const name of Object.keys(value)) {
    const field = (value as Record<string, unknown>)[name];
    if (Object.hasOwn(lists, name) && isPlainArray(field)) listed.push([name, field]);
    else fields[name] = field;
  }
  const head = JSON.stringify(fields).slice(0, -1);
  out.push(head);
  let first = head.length === 1;
  for (const [name, list] of listed) {
    out.push(`${first ? "" : ","}${JSON.stringify(name)}:`);
    first = false;
    lists[name]!(list);
  }
  out.push("}");
  return true;
}

/**
 * Pushes a list's JSON onto `out`; like JSON.stringify, a hole or an entry with no JSON form is
 * written as null. `write` pushes an entry's parts itself when it gives "", or gives them.
 */
function listParts<E extends Part>(entries: unknown[], write: (entry: object) => E | "" | undefined, out: Array<string | E>): void {
  out.push("[");
  for (let i = 0; i < entries.length; i++) {
    if (i > 0) out.push(",");
    const entry = entries[i];
    if (entry !== null && typeof entry === "object") {
      // Nothing was pushed for an entry with no JSON form.
      const written = write(entry);
      if (written === undefined) out.push("null");
      else if (written !== "") out.push(written);
    } else out.push((JSON.stringify(entry) as string | undefined) ?? "null");
  }
  out.push("]");
}

function isPlainObject(value: unknown): value is object {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return false;
  const prototype = Object.getPrototypeOf(value);
  return (prototype === Object.prototype || prototype === null) && !("toJSON" in value);
}

function isPlainArray(value: unknown): value is unknown[] {
  return Array.isArray(value) && Object.getPrototypeOf(value) === Array.prototype && !("toJSON" in value);
}
