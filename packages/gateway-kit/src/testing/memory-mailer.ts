import { parseMailMessage, type MailMessage, type Mailer } from "../mailer.js";

/** A mailer that keeps what it sends in memory, for tests of flows that send email. */
export interface MemoryMailer extends Mailer {
  /** Every message sent, oldest first. */
  readonly messages: readonly MailMessage[];
  /** The messages sent to `to`, oldest first. */
  to(to: string): MailMessage[];
}

/**
 * A `Mailer` for tests: nothing leaves the process. It refuses what every mailer refuses
 * (`parseMailMessage`), and passes `mailerContract`.
 *
 * @example
 * const mailer = createMemoryMailer();
 * const auth = createAuthService({ ...options, emailVerification: { mailer } });
 * // ... request a verification email ...
 * const token = /evt_[\w-]+/.exec(mailer.to("ada@example.com").at(-1)!.text)![0];
 */
export function createMemoryMailer(): MemoryMailer {
  const messages: MailMessage[] = [];
  return {
    messages,
    to: (to) => messages.filter((m) => m.to === to),
    async send(message) {
      messages.push({ ...parseMailMessage(message) });
    },
  };
}
