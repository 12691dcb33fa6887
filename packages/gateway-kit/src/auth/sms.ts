import { randomInt } from "node:crypto";

/**
 * Sends text messages for the SMS factor. Bring your provider (Twilio, SNS, …) behind it.
 *
 * @example
 * const sender: SmsSender = { send: async (phone, text) => { await twilio.messages.create({ to: phone, body: text, from }); } };
 */
export interface SmsSender {
  send(phone: string, message: string): Promise<void>;
}

/** A 6-digit one-time code. */
export function newSmsCode(): string {
  return String(randomInt(0, 1_000_000)).padStart(6, "0");
}

/** E.164 phone numbers, e.g. `+447700900123`. */
export const PHONE_NUMBER = /^\+[1-9]\d{6,14}$/;
