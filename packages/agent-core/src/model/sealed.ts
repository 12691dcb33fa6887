/**
 * Entries of a run's state that never change once recorded: the messages of a conversation and
 * the file states of an agent's journal. Sealing one freezes it and everything it holds, so a
 * snapshot can share it instead of copying it, and what is worked out from it (its JSON, its
 * estimated tokens) can be kept for as long as it lives. Code that needs another version of a
 * sealed entry makes a new object; an assignment to a sealed one throws a TypeError.
 */
const sealed = new WeakSet<object>();

/** Freezes `entry` and every object it holds (walked without recursion), once; returns `entry`. */
export function seal<T extends object>(entry: T): T {
  if (sealed.has(entry)) return entry;
  const stack: object[] = [entry];
  const seen = new Set<object>();
  while (stack.length > 0) {
    const value = stack.pop()!;
    // Byte arrays cannot be frozen; conversations and journals hold none (they are JSON data).
    if (seen.has(value) || sealed.has(value) || ArrayBuffer.isView(value)) continue;
    seen.add(value);
    Object.freeze(value);
    // An object frozen elsewhere may still hold ones that are not: every one is walked.
    for (const inner of Object.values(value)) if (inner !== null && typeof inner === "object") stack.push(inner);
  }
  sealed.add(entry);
  return entry;
}

/** True for an entry `seal` froze whole. */
export function isSealed(entry: object): boolean {
  return sealed.has(entry);
}

/**
 * A value worked out from sealed entries only, kept per entry: `compute` runs once per sealed
 * entry and on every call for any other.
 */
export function perSealedEntry<T extends object, V>(compute: (entry: T) => V): (entry: T) => V {
  const known = new WeakMap<T, V>();
  return (entry) => {
    if (!sealed.has(entry)) return compute(entry);
    if (known.has(entry)) return known.get(entry)!;
    const value = compute(entry);
    known.set(entry, value);
    return value;
  };
}
