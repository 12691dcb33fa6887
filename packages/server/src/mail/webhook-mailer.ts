import { parseMailMessage, type Mailer } from "@keen/gateway-kit";

/**
 * A `Mailer` that hands each message to an HTTP endpoint you run (a relay in front of SMTP or an
 * email API): `POST <url>` with the JSON `{ to, subject, text }`, and `Authorization: Bearer
 * <token>` when a token is set. Any 2xx answer is delivered; anything else, or no answer within
 * `timeoutMs`, fails the send. The URL is the operator's, so it may be private or loopback.
 *
 * @example
 * const mailer = webhookMailer({ url: "http://127.0.0.1:8025/send", token: process.env.MAIL_TOKEN });
 */
export function webhookMailer(options: { url: string; token?: string | undefined; timeoutMs?: number; fetch?: typeof fetch }): Mailer {
  const send = options.fetch ?? fetch;
  return {
    async send(input) {
      const message = parseMailMessage(input);
      const response = await send(options.url, {
        method: "POST",
        headers: { "content-type": "application/json", ...(options.token ? { authorization: `Bearer ${options.token}` } : {}) },
        body: JSON.stringify(message),
        redirect: "error",
        signal: AbortSignal.timeout(options.timeoutMs ?? 10_000),
      });
      // Drained either way, so the connection can be reused.
      await response.arrayBuffer().catch(() => undefined);
      if (!response.ok) throw new Error(`The mail webhook answered ${response.status}`);
    },
  };
}
