import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import * as z from "zod";
import { ConfigError } from "../errors.js";

const KEY_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;

const KeyMaterial = z.union([
  z.instanceof(Uint8Array),
  // base64 or base64url text of 32 random bytes, e.g. `openssl rand -base64 32`
  z.string().regex(/^[A-Za-z0-9+/_-]+={0,2}$/, "must be base64 text"),
]);

/**
 * Keys that encrypt TOTP secrets at rest (AES-256-GCM). `keys` maps a key id to 32 bytes (or their
 * base64); new secrets are sealed with `currentKeyId`. Keep retired keys listed until every
 * factor sealed with them has been used (each use re-seals with the current key).
 */
export const TotpEncryptionOptions = z
  .object({
    currentKeyId: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, "key ids are 1–64 letters, digits, '.', '_' or '-'"),
    keys: z.record(z.string(), KeyMaterial),
  })
  .strict();
export type TotpEncryptionOptions = z.input<typeof TotpEncryptionOptions>;

/** A TOTP secret as stored: `keyId` null means a row written before encryption (plain base32). */
export interface StoredTotpSecret {
  secret: string;
  keyId: string | null;
}

/** Seals and opens TOTP secrets; bound to the factor id so a sealed secret cannot be moved to another row. */
export interface TotpSecretBox {
  seal(factorId: string, secret: string): StoredTotpSecret;
  open(factorId: string, stored: StoredTotpSecret): string;
  /** True when the stored form is not sealed with the current key (plain text or a retired key). */
  isStale(stored: StoredTotpSecret): boolean;
}

/** Without keys: secrets stay as they are (plain rows), and a sealed row cannot be opened. */
const plainBox: TotpSecretBox = {
  seal: (_factorId, secret) => ({ secret, keyId: null }),
  open(_factorId, stored) {
    if (stored.keyId === null) return stored.secret;
    throw new ConfigError(`A TOTP secret is sealed with key "${stored.keyId}" but no totpEncryption keys are configured`);
  },
  isStale: () => false,
};

/**
 * Builds the box from options; bad keys throw a `ConfigError` at startup, not at the first login.
 *
 * @example
 * const box = createTotpSecretBox({ currentKeyId: "2026-12", keys: { "2026-12": process.env.TOTP_KEY! } });
 * const stored = box.seal(factorId, secret); // { secret: "…", keyId: "2026-12" }
 */
export function createTotpSecretBox(options: TotpEncryptionOptions | undefined): TotpSecretBox {
  if (options === undefined) return plainBox;
  const parsed = TotpEncryptionOptions.safeParse(options);
  if (!parsed.success) throw new ConfigError(`Invalid totpEncryption options: ${z.prettifyError(parsed.error)}`);
  const keys = new Map<string, Buffer>();
  for (const [id, material] of Object.entries(parsed.data.keys)) {
    const bytes = typeof material === "string" ? Buffer.from(material, "base64") : Buffer.from(material);
    if (bytes.length !== KEY_BYTES) throw new ConfigError(`totpEncryption key "${id}" must be ${KEY_BYTES} bytes, not ${bytes.length}`);
    keys.set(id, bytes);
  }
  const currentId = parsed.data.currentKeyId;
  const current = keys.get(currentId);
  if (!current) throw new ConfigError(`totpEncryption.currentKeyId "${currentId}" is not among its keys`);
  const aad = (factorId: string, keyId: string) => Buffer.from(`keen-totp:${factorId}:${keyId}`, "utf8");
  return {
    seal(factorId, secret) {
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv("aes-256-gcm", current, iv, { authTagLength: TAG_BYTES });
      cipher.setAAD(aad(factorId, currentId));
      const body = Buffer.concat([cipher.update(secret, "utf8"), cipher.final()]);
      return { secret: Buffer.concat([iv, cipher.getAuthTag(), body]).toString("base64"), keyId: currentId };
    },
    open(factorId, stored) {
      if (stored.keyId === null) return stored.secret;
      const key = keys.get(stored.keyId);
      if (!key) throw new ConfigError(`A TOTP secret is sealed with key "${stored.keyId}", which totpEncryption.keys no longer lists`);
      const raw = Buffer.from(stored.secret, "base64");
      if (raw.length <= IV_BYTES + TAG_BYTES) throw new ConfigError(`A TOTP secret sealed with key "${stored.keyId}" is truncated`);
      const decipher = createDecipheriv("aes-256-gcm", key, raw.subarray(0, IV_BYTES), { authTagLength: TAG_BYTES });
      decipher.setAAD(aad(factorId, stored.keyId));
      decipher.setAuthTag(raw.subarray(IV_BYTES, IV_BYTES + TAG_BYTES));
      try {
        return Buffer.concat([decipher.update(raw.subarray(IV_BYTES + TAG_BYTES)), decipher.final()]).toString("utf8");
      } catch (cause) {
        throw new ConfigError(`A TOTP secret does not open with key "${stored.keyId}" (wrong key, or the row was altered)`, { cause });
      }
    },
    isStale: (stored) => stored.keyId !== currentId,
  };
}
