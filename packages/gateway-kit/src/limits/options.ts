import { z } from "zod";

/** Parses factory options, turning a schema failure into a TypeError that names the factory. */
export function parseOptions<T extends z.ZodType>(schema: T, value: unknown, name: string): z.output<T> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new TypeError(`Invalid ${name} options: ${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

export const fn = <T>() => z.custom<T>((v) => typeof v === "function", "must be a function");
export const clock = () => fn<() => Date>().default(() => () => new Date());
