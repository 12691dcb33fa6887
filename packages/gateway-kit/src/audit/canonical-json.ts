/**
 * Canonical JSON, the byte-exact form the audit chain hashes (RFC 8785, JSON Canonicalization Scheme):
 *
 * - `null`, `true`, `false` as JSON literals;
 * - numbers must be finite; written the way ECMAScript's `Number#toString` writes them (shortest
 *   round-trip form, `-0` as `0`, exponents as `1e+21`);
 * - strings with JSON.stringify's escaping: `\"`, `\\`, `\b \f \n \r \t`, other control characters
 *   and lone surrogates as lower-case `\uXXXX`, everything else as UTF-8;
 * - arrays in order; objects with keys sorted by UTF-16 code units, properties whose value is
 *   `undefined` left out; no whitespace anywhere;
 * - a value with `toJSON()` (e.g. a `Date`) is replaced by its result first.
 *
 * Anything else (bigint, function, symbol, `undefined` in an array, NaN, Infinity, a cycle) is a
 * `TypeError`: the same input always yields the same bytes, or nothing.
 *
 * @example
 * canonicalJson({ b: [1, "x"], a: null }); // '{"a":null,"b":[1,"x"]}'
 */
export function canonicalJson(value: unknown): string {
  const stack = new Set<object>();
  const write = (v: unknown, where: string): string => {
    if (v === null) return "null";
    switch (typeof v) {
      case "boolean":
        return v ? "true" : "false";
      case "number":
        if (!Number.isFinite(v)) throw new TypeError(`canonicalJson: ${where} is ${v}, not a finite number`);
        return JSON.stringify(v);
      case "string":
        return JSON.stringify(v);
      case "object":
        break;
      default:
        throw new TypeError(`canonicalJson: ${where} is a ${typeof v}, which JSON cannot hold`);
    }
    const obj = v as object;
    if (typeof (obj as { toJSON?: unknown }).toJSON === "function") return write((obj as { toJSON(): unknown }).toJSON(), where);
    if (stack.has(obj)) throw new TypeError(`canonicalJson: ${where} is a cycle`);
    stack.add(obj);
    let out: string;
    if (Array.isArray(obj)) {
      out = `[${obj.map((item, i) => write(item, `${where}[${i}]`)).join(",")}]`;
    } else {
      const keys = Object.keys(obj).filter((k) => (obj as Record<string, unknown>)[k] !== undefined).sort();
      out = `{${keys.map((k) => `${JSON.stringify(k)}:${write((obj as Record<string, unknown>)[k], `${where}.${k}`)}`).join(",")}}`;
    }
    stack.delete(obj);
    return out;
  };
  return write(value, "value");
}
