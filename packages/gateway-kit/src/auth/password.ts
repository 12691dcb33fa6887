import { ConfigError } from "../errors.js";
import type { Algorithm } from "@node-rs/argon2";
import { loadOptional } from "../optional-dependency.js";
import * as z from "zod";

/** Argon2id cost parameters. */
export const PasswordHashingOptions = z
  .object({
    /** Memory in KiB. OWASP minimum for argon2id: 19456 (19 MiB). */
    memoryCost: z.number().int().min(8).max(4_194_304).default(19_456),
    /** Passes. OWASP: 2 with 19 MiB. */
    timeCost: z.number().int().min(1).max(100).default(2),
    parallelism: z.number().int().min(1).max(16).default(1),
  })
  .strict();
export type PasswordHashingOptions = z.input<typeof PasswordHashingOptions>;

/** Argon2id is value 2 of the binding's const enum, which isolated modules cannot read. */
const ARGON2ID = 2 as Algorithm;

/** Hashes and checks passwords. */
export interface PasswordHasher {
  hash(password: string): Promise<string>;
  /** True when the password matches; false for a mismatch or an unreadable hash. */
  verify(passwordHash: string, password: string): Promise<boolean>;
  /** Spends the same time as a real check, for logins of unknown accounts. */
  verifyDummy(password: string): Promise<void>;
}

/**
 * Argon2id with the OWASP parameters by default (m=19456 KiB, t=2, p=1). Tests may lower the
 * cost; production should not.
 *
 * @example
 * const hasher = createPasswordHasher();
 * const stored = await hasher.hash("correct horse battery staple");
 * await hasher.verify(stored, "correct horse battery staple"); // true
 */
export function createPasswordHasher(options: PasswordHashingOptions = {}): PasswordHasher {
  const parsed = PasswordHashingOptions.safeParse(options);
  if (!parsed.success) throw new ConfigError(`Invalid password hashing options: ${z.prettifyError(parsed.error)}`);
  const params = { ...parsed.data, algorithm: ARGON2ID };
  let dummy: Promise<string> | undefined;
  const argon2 = () => loadOptional<typeof import("@node-rs/argon2")>("@node-rs/argon2");
  const hash = async (password: string) => (await argon2()).hash(password, params);
  return {
    hash,
    async verify(passwordHash, password) {
      const { verify } = await argon2();
      try {
        // argon2's verify compares digests in constant time.
        return await verify(passwordHash, password);
      } catch {
        return false;
      }
    },
    async verifyDummy(password) {
      dummy ??= hash("keen-dummy-password");
      const { verify } = await argon2();
      await verify(await dummy, password).catch(() => false);
    },
  };
}

/**
 * Canonical form of an email address for lookups: Unicode NFKC, trimmed, lower-cased.
 *
 * @example
 * normaliseEmail("  Ada@Example.COM "); // "ada@example.com"
 */
export function normaliseEmail(email: string): string {
  return email.normalize("NFKC").trim().toLowerCase();
}

/** An email address, normalised. */
export const Email = z
  .string()
  .max(320)
  .transform(normaliseEmail)
  .pipe(z.email({ message: "Invalid email address" }));

/** A new password: long enough to matter, short enough that hashing it cannot be abused. */
export const NewPassword = z.string().min(10, "Password must be at least 10 characters").max(256, "Password is too long");
