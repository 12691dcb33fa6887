import { createHmac, randomBytes } from "node:crypto";

const SECRET_PREFIX = "whsec_";

/**
 * A new signing secret in the Standard Webhooks form: `whsec_` and 32 random bytes in base64.
 *
 * @example
 * const secret = newWebhookSecret(); // "whsec_3q2+7w…"
 */
export function newWebhookSecret(): string {
  return `${SECRET_PREFIX}${randomBytes(32).toString("base64")}`;
}

/** The HMAC key a `whsec_` secret stands for. */
function secretKey(secret: string): Buffer {
  if (!secret.startsWith(SECRET_PREFIX)) throw new TypeError("a webhook secret starts with whsec_");
  return Buffer.from(secret.slice(SECRET_PREFIX.length), "base64");
}

/**
 * The `webhook-signature` header value for one delivery attempt: `v1,` and the base64
 * HMAC-SHA256 of `<webhook-id>.<webhook-timestamp>.<body>` under the secret's key.
 *
 * @example
 * const signature = signWebhook(secret, "msg_1", 1767225600, '{"type":"run.completed"}');
 */
export function signWebhook(secret: string, id: string, timestamp: number, body: string): string {
  const mac = createHmac("sha256", secretKey(secret)).update(`${id}.${timestamp}.${body}`).digest("base64");
  return `v1,${mac}`;
}
