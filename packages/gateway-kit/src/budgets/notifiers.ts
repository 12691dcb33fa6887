import { GatewayError } from "../errors.js";
import { createHmac, timingSafeEqual } from "node:crypto";
import * as z from "zod";
import { clockOption, functionOption, parseOptions } from "../options.js";
import type { BudgetAlert, BudgetNotifier } from "./types.js";

/** The JSON body of a budget alert, as the webhook sends it. */
export function budgetAlertPayload(alert: BudgetAlert) {
  return {
    type: "budget.threshold_reached" as const,
    id: alert.id,
    scope: alert.budget.scope,
    period: alert.budget.period,
    periodKey: alert.periodKey,
    threshold: alert.threshold,
    spent: alert.spent,
    limit: alert.limit,
    firedAt: alert.firedAt.toISOString(),
  };
}

/** The header carrying the signature: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. */
export const BUDGET_WEBHOOK_SIGNATURE_HEADER = "Keen-Signature";

/**
 * Signs a webhook body the way `webhookNotifier` does.
 *
 * @example
 * const header = signBudgetWebhook(body, secret, Math.floor(Date.now() / 1000));
 */
export function signBudgetWebhook(body: string, secret: string, timestamp: number): string {
  const mac = createHmac("sha256", secret).update(`${timestamp}.${body}`).digest("hex");
  return `t=${timestamp},v1=${mac}`;
}

/**
 * Checks a `Keen-Signature` header against the raw body: the HMAC must match (constant-time)
 * and the timestamp must be within `toleranceSeconds` of now (default 300), which stops replays.
 *
 * @example
 * if (!verifyBudgetWebhook({ body: rawBody, header: req.headers["keen-signature"], secret })) res.statusCode = 400;
 */
export function verifyBudgetWebhook(input: {
  body: string;
  header: string | undefined;
  secret: string;
  toleranceSeconds?: number;
  now?: Date;
}): boolean {
  if (!input.header) return false;
  const parts = new Map<string, string[]>();
  for (const item of input.header.split(",")) {
    const [k, v] = item.trim().split("=", 2);
    if (!k || !v) continue;
    parts.set(k, [...(parts.get(k) ?? []), v]);
  }
  const t = Number(parts.get("t")?.[0]);
  if (!Number.isInteger(t)) return false;
  const nowSeconds = Math.floor((input.now ?? new Date()).getTime() / 1000);
  if (Math.abs(nowSeconds - t) > (input.toleranceSeconds ?? 300)) return false;
  const expected = Buffer.from(createHmac("sha256", input.secret).update(`${t}.${input.body}`).digest("hex"));
  return (parts.get("v1") ?? []).some((sig) => {
    const given = Buffer.from(sig);
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
}

/** A webhook answered with a non-2xx status or could not be reached. */
export class BudgetWebhookError extends GatewayError {
  /** The webhook's own response status, when it answered. */
  readonly status: number | undefined;
  constructor(message: string, status?: number) {
    super("budget_webhook_failed", message, { details: status === undefined ? undefined : { responseStatus: status } });
    this.name = "BudgetWebhookError";
    this.status = status;
  }
}

const WebhookOptions = z
  .object({
    url: z.url({ protocol: /^https?$/ }),
    /** The shared secret for the HMAC; at least 16 characters. */
    secret: z.string().min(16),
    /** Abort a delivery after this long. Default 10 s. */
    timeoutMs: z.number().int().min(1).max(120_000).default(10_000),
    /** Extra headers, e.g. an authorization token of the receiver. */
    headers: z.record(z.string(), z.string()).default({}),
    fetch: functionOption<typeof fetch>().optional(),
    now: clockOption(),
  })
  .strict();
export type WebhookNotifierOptions = z.input<typeof WebhookOptions>;

/**
 * POSTs each alert as JSON to a URL, signed with `Keen-Signature` (see `verifyBudgetWebhook`)
 * and carrying `Keen-Webhook-Id` (the alert id, stable across retries). A non-2xx answer throws,
 * so the alert stays pending for `deliverPendingAlerts()`.
 *
 * @example
 * createKyselyBudgets(db, { notifier: webhookNotifier({ url: "https://ops.example.com/hooks/keen", secret }) });
 */
export function webhookNotifier(input: WebhookNotifierOptions): BudgetNotifier {
  const options = parseOptions(WebhookOptions, input, "webhook notifier");
  const doFetch = options.fetch ?? fetch;
  return {
    async notify(alert) {
      const body = JSON.stringify(budgetAlertPayload(alert));
      const timestamp = Math.floor(options.now().getTime() / 1000);
      let response: Response;
      try {
        response = await doFetch(options.url, {
          method: "POST",
          headers: {
            ...options.headers,
            "content-type": "application/json",
            "keen-webhook-id": alert.id,
            [BUDGET_WEBHOOK_SIGNATURE_HEADER.toLowerCase()]: signBudgetWebhook(body, options.secret, timestamp),
          },
          body,
          signal: AbortSignal.timeout(options.timeoutMs),
          redirect: "error",
        });
      } catch (error) {
        throw new BudgetWebhookError(`Webhook ${options.url} unreachable: ${(error as Error).message}`);
      }
      await response.body?.cancel();
      if (!response.ok) throw new BudgetWebhookError(`Webhook ${options.url} answered ${response.status}`, response.status);
    },
  };
}

/** An email to send. */
export interface EmailMessage {
  to: string[];
  subject: string;
  text: string;
}

/** Sends email; wrap your provider (SMTP, SES, Postmark …) in this. */
export interface EmailSender {
  send(message: EmailMessage): Promise<void>;
}

const EmailOptions = z
  .object({
    sender: z.custom<EmailSender>((v) => typeof (v as EmailSender)?.send === "function", "sender must have send()"),
    /** Who is told about an alert, e.g. the team's owners. An empty list sends nothing. */
    recipients: functionOption<(alert: BudgetAlert) => string[] | Promise<string[]>>(),
  })
  .strict();
export type EmailNotifierOptions = z.input<typeof EmailOptions>;

const formatCredits = (micros: number) => (micros / 1_000_000).toLocaleString("en-US", { maximumFractionDigits: 6 });

/**
 * Emails each alert to the recipients you pick for it.
 *
 * @example
 * emailNotifier({ sender: smtpSender, recipients: async (a) => ownersOf(a.budget.scope) });
 */
export function emailNotifier(input: EmailNotifierOptions): BudgetNotifier {
  const { sender, recipients } = parseOptions(EmailOptions, input, "email notifier");
  return {
    async notify(alert) {
      const to = await recipients(alert);
      if (to.length === 0) return;
      const { scope, period } = alert.budget;
      const what = alert.threshold >= 100 ? "reached" : `passed ${alert.threshold}% of`;
      await sender.send({
        to,
        subject: `Budget alert: ${scope.kind} ${scope.id} ${what} its ${period} budget`,
        text:
          `The ${period} budget of ${scope.kind} ${scope.id} (${alert.periodKey}) has ${what} its limit.\n` +
          `Spent: ${formatCredits(alert.spent)} credits of ${formatCredits(alert.limit)}.\n`,
      });
    },
  };
}

/**
 * Sends each alert to every notifier; all are tried, and the first failure is rethrown after.
 *
 * @example
 * combineNotifiers(webhookNotifier({ url, secret }), emailNotifier({ sender, recipients }));
 */
export function combineNotifiers(...list: BudgetNotifier[]): BudgetNotifier {
  return {
    async notify(alert) {
      const results = await Promise.allSettled(list.map((n) => n.notify(alert)));
      const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
      if (failed) throw failed.reason;
    },
  };
}
