import * as z from "zod";
import { GatewayError } from "./errors.js";

/** No line breaks: a recipient or subject that holds one could add headers to the message. */
const HEADER_SAFE = /^[^\r\n\u0000\u2028\u2029]*$/;

/**
 * One plain-text message. `to` is a single address and `subject` a single line; a mailer refuses
 * anything else (see `parseMailMessage`).
 */
export const MailMessage = z
  .object({
    to: z.email().max(320).regex(HEADER_SAFE, "must be one line"),
    subject: z.string().min(1).max(200).regex(HEADER_SAFE, "must be one line"),
    text: z.string().max(100_000),
  })
  .strict();
export type MailMessage = z.infer<typeof MailMessage>;

/**
 * Sends email for the auth service (verification links). Bring your delivery (SMTP, an email
 * API, a queue) behind it; every implementation should pass `mailerContract` from
 * `@keen/gateway-kit/testing`. `send` resolves once the message is handed over for delivery and
 * rejects when it could not be.
 *
 * @example
 * const mailer: Mailer = {
 *   async send(message) {
 *     const { to, subject, text } = parseMailMessage(message);
 *     await emailApi.post("/send", { from: "keen@example.com", to, subject, text });
 *   },
 * };
 */
export interface Mailer {
  send(message: MailMessage): Promise<void>;
}

/**
 * Checks a message before a mailer writes it anywhere: one address, a one-line subject. Throws
 * `GatewayError` `invalid_mail_message` (a 500 at the edge: the sender built it wrong).
 *
 * @example
 * const { to, subject, text } = parseMailMessage(message);
 */
export function parseMailMessage(message: unknown): MailMessage {
  const parsed = MailMessage.safeParse(message);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new GatewayError("invalid_mail_message", `Refused to send: ${issue?.path.join(".") || "message"} ${issue?.message ?? "is invalid"}`);
  }
  return parsed.data;
}
