/**
 * Entries of a run's state that never change once recorded: the messages of a conversation and
 * the file states of an agent's journal. Sealing one freezes it and everything it holds, so a
 * snapshot can share it instead of copying it, and what is worked out from it (its JSON, its
 * estimated tokens) can be kept for as long as it lives. Code that needs another version of a
 * sealed entry makes a new object; an assignment to a sealed one throws a TypeError.
 *
 * Only JSON data can be sealed: plain objects and arrays whose properties hold strings, numbers,
 * booleans, null or more of the same. Anything else (a Date, a typed array, a getter, a
 * function such as `toJSON`, another class) can change while frozen, or decide its own JSON:
 * an entry holding one is left as it is, unsealed, and is copied and worked out afresh each time.
 */
const sealed = new WeakSet<object>();

/** Freezes `entry` and every object it holds when all of it is JSON data, once; returns `entry`. */
export function seal<T extends object>(entry: T): T {
  if (sealed.has(entry)) return entry;
  const objects = jsonObjects(entry);
  if (objects === undefined) return entry;
  for (const object of objects) Object.freeze(object);
  sealed.add(entry);
  return entry;
}

/**
 * Every object in `entry` (walked without recursion, so any depth is fine), or undefined when
 * something in it is not JSON data.
 */
function jsonObjects(entry: object): object[] | undefined {
  const stack: object[] = [entry];
  const seen = new Set<object>();
  while (stack.length > 0) {
    const value = stack.pop()!;
    if (seen.has(value) || (value !== entry && sealed.has(value))) continue;
    seen.add(value);
    const prototype = Object.getPrototypeOf(value);
    if (Array.isArray(value) ? prototype !== Array.prototype : prototype !== Object.prototype && prototype !== null) return undefined;
    for (const key of Reflect.ownKeys(value)) {
      const property = Object.getOwnPropertyDescriptor(value, key)!;
      if (!("value" in property)) return undefined;
      const inner: unknown = property.value;
      if (inner === null || inner === undefined || typeof inner === "string" || typeof inner === "number" || typeof inner === "boolean") continue;
      if (typeof inner !== "object") return undefined;
      stack.push(inner);
    }
  }
  return [...seen];
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
