import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { MailMessage, Mailer } from "../mailer.js";

/** What a mailer under test is made of: the mailer, and a way to read back what was delivered to an address, oldest first. */
export interface MailerUnderTest {
  mailer: Mailer;
  read(to: string): Promise<ReadonlyArray<MailMessage>>;
}

/**
 * The behaviour every `Mailer` must have: each message delivered with its recipient, subject and
 * text unchanged, in order per recipient; none lost when many are sent at once; and a recipient
 * or subject holding a line break (a header injection) refused with nothing delivered.
 *
 * @example
 * mailerContract("smtp relay", async () => ({ mailer: createRelayMailer(relay), read: (to) => relay.inbox(to) }));
 */
export function mailerContract(name: string, setup: () => MailerUnderTest | Promise<MailerUnderTest>): void {
  describe(`Mailer contract: ${name}`, () => {
    const address = () => `mail-${randomUUID()}@example.test`;

    it("delivers each message's recipient, subject and text unchanged, in order", async () => {
      const { mailer, read } = await setup();
      const to = address();
      const messages: MailMessage[] = [
        { to, subject: "Confirm your email address", text: "Verification token: evt_abc\n\nIt works once.\n" },
        {
          to,
          subject: "Bestätigen Sie Ihre Adresse ✓",
          text: `From: not-a-header@example.test\n.\nLine with a trailing space \n${"x".repeat(2000)}\nżółw 🐢\n`,
        },
      ];
      for (const message of messages) await mailer.send(message);
      expect(await read(to)).toEqual(messages);
    });

    it("loses nothing when many are sent at once, and keeps recipients apart", async () => {
      const { mailer, read } = await setup();
      const [a, b] = [address(), address()];
      await Promise.all(Array.from({ length: 20 }, (_, i) => mailer.send({ to: i % 2 ? a : b, subject: `message ${i}`, text: `body ${i}\n` })));
      const [toA, toB] = [await read(a), await read(b)];
      expect(toA).toHaveLength(10);
      expect(toB).toHaveLength(10);
      expect(new Set(toA.map((m) => m.subject)).size).toBe(10);
      expect(toA.every((m) => m.to === a && m.text === `body ${m.subject.split(" ")[1]}\n`)).toBe(true);
    });

    it("refuses a recipient or subject with a line break, delivering nothing", async () => {
      const { mailer, read } = await setup();
      const to = address();
      await expect(mailer.send({ to: `${to}\r\nBcc: victim@example.test`, subject: "hi", text: "x" })).rejects.toThrow();
      await expect(mailer.send({ to, subject: "hi\r\nBcc: victim@example.test", text: "x" })).rejects.toThrow();
      await expect(mailer.send({ to, subject: "hi\nX-Injected: 1", text: "x" })).rejects.toThrow();
      expect(await read(to)).toEqual([]);
    });
  });
}
