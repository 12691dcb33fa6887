import * as z from "zod";
import { ConfigError } from "./errors.js";

/**
 * Checks a factory's options against its schema. A mismatch is a `ConfigError` (`invalid_config`)
 * naming the factory and every problem, thrown when the factory is called, inside or outside Koa.
 *
 * @example
 * const { limit } = parseOptions(RateLimitOptions, input, "rateLimit");
 */
export function parseOptions<T extends z.ZodType>(schema: T, value: unknown, factory: string): z.output<T> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    throw new ConfigError(`Invalid ${factory} options: ${z.prettifyError(parsed.error)}`, {
      details: { factory, issues: parsed.error.issues.map((issue) => ({ path: issue.path.map(String), message: issue.message })) },
    });
  }
  return parsed.data;
}

/**
 * A schema for an option that holds a function (a callback, a policy, a `fetch`); the type
 * parameter is the function's signature, which zod cannot check at run time.
 *
 * @example
 * z.object({ estimate: functionOption<(ctx: Context) => number>() })
 */
export const functionOption = <T>() => z.custom<T>((value) => typeof value === "function", "must be a function");

/**
 * A schema for a `now: () => Date` option: a function returning the current time, defaulting to
 * the system clock (tests pass a clock they move by hand).
 */
export const clockOption = () => functionOption<() => Date>().default(() => () => new Date());
