import type Stripe from "stripe";
import * as z from "zod";
import { ConfigError, GatewayError } from "../errors.js";

export const MeterReportInput = z.object({
  /** The Stripe customer billed for the usage. */
  customerId: z.string().min(1),
  /** Quantity in the meter's unit, a non-negative integer. */
  value: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  /** Unique per usage record (e.g. `settle:<reservationId>`): Stripe counts an identifier once. */
  identifier: z.string().min(1).max(100),
  /** When the usage happened. Default now. */
  timestamp: z.date().optional(),
});
export type MeterReportInput = z.input<typeof MeterReportInput>;

export interface UsageMeter {
  report(input: MeterReportInput): Promise<{ identifier: string; eventName: string }>;
}

/**
 * Reports usage to a Stripe billing meter. Each record carries an identifier that doubles as the
 * request's idempotency key, so a retried report is counted once.
 *
 * @example
 * const meter = createUsageMeter({ stripe, eventName: "keen_credits" });
 * await meter.report({ customerId: "cus_123", value: settlement.charged, identifier: `settle:${settlement.reservationId}` });
 */
export function createUsageMeter(options: { stripe: Stripe; eventName: string }): UsageMeter {
  if (!options?.stripe || typeof options.eventName !== "string" || options.eventName.length === 0) {
    throw new ConfigError("createUsageMeter needs a Stripe client and an eventName");
  }
  const { stripe, eventName } = options;
  return {
    async report(input) {
      const parsed = MeterReportInput.safeParse(input);
      if (!parsed.success) throw new GatewayError("invalid_meter_report", `Invalid meter report: ${z.prettifyError(parsed.error)}`);
      const { customerId, value, identifier, timestamp } = parsed.data;
      await stripe.billing.meterEvents.create(
        {
          event_name: eventName,
          identifier,
          payload: { stripe_customer_id: customerId, value: String(value) },
          timestamp: Math.floor((timestamp ?? new Date()).getTime() / 1000),
        },
        { idempotencyKey: `meter:${eventName}:${identifier}` },
      );
      return { identifier, eventName };
    },
  };
}
