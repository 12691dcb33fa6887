import type { Kysely } from "kysely";
import type { DataRightsContributor } from "../privacy/index.js";
import type { BillingTables } from "./migrations.js";

const text = (value: unknown) => (value == null ? null : String(value));
const iso = (value: unknown) => (value == null ? null : new Date(value as string | Date).toISOString());

/**
 * Stripe billing's part in a user's data rights (`billingMigrations`).
 *
 * Export: every checkout started for the user's wallet (pack, credits, price, currency, status,
 * Stripe session and payment ids, credits taken back) with its refunds and disputes.
 *
 * Erasure: checkouts and their refunds are financial records a business must keep, and hold no
 * personal data (wallet ids are opaque; card and contact details stay at Stripe, which the host
 * asks to erase through Stripe's own tools). They stay, pointing at a wallet nothing resolves to
 * a person once the auth records are erased.
 *
 * @example
 * await exportUserData(db, userId, [authDataRights(), creditsDataRights, billingDataRights]);
 */
export const billingDataRights: DataRightsContributor = {
  name: "billing",
  async export(db: Kysely<any>, userId: string) {
    const wallets = await db.selectFrom("ledger_accounts").select("id").where("kind", "=", "user_wallet").where("owner_id", "=", userId).execute();
    const walletIds = wallets.map((w) => w.id as string);
    if (walletIds.length === 0) return { checkouts: [] };
    const b = db as Kysely<BillingTables>;
    const checkouts = await b.selectFrom("billing_checkouts").selectAll().where("account_id", "in", walletIds).orderBy("created_at").execute();
    const sessionIds = checkouts.map((c) => c.session_id);
    const reversals = sessionIds.length ? await b.selectFrom("billing_reversals").selectAll().where("session_id", "in", sessionIds).orderBy("created_at").execute() : [];
    return {
      checkouts: checkouts.map((c) => ({
        sessionId: c.session_id,
        accountId: c.account_id,
        packId: c.pack_id,
        credits: text(c.credits),
        amountTotal: text(c.amount_total),
        currency: c.currency,
        status: c.status,
        paymentIntentId: c.payment_intent_id,
        reversedCredits: text(c.reversed_credits),
        createdAt: iso(c.created_at),
        completedAt: iso(c.completed_at),
        reversals: reversals
          .filter((r) => r.session_id === c.session_id)
          .map((r) => ({ id: r.id, kind: r.kind, amount: text(r.amount_cents), reinstatedAt: iso(r.reinstated_at), createdAt: iso(r.created_at) })),
      })),
    };
  },
  async erase() {
    // Financial records without personal data; see the doc comment.
  },
};
