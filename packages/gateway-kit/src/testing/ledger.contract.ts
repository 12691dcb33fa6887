import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { Ledger } from "../credits/index.js";

/**
 * The behaviour every credits `Ledger` must have: wallets, idempotent grants, purchases and
 * transfers, reservations settled or released once, reversals that turn spent credits into debt,
 * and books that always balance. Refusals are coded errors (`insufficient_credits`, …).
 *
 * @example
 * ledgerContract("my ledger", () => createMyLedger(pool));
 */
export function ledgerContract(name: string, newLedger: () => Ledger | Promise<Ledger>): void {
  describe(`Ledger contract: ${name}`, () => {
    const owner = () => ({ userId: `u_${randomUUID()}` });
    const balance = async (ledger: Ledger, id: string) => (await ledger.getAccount(id)).balance;

    it("opens one wallet per owner, empty", async () => {
      const ledger = await newLedger();
      const who = owner();
      const wallet = await ledger.openWallet(who);
      expect(wallet).toMatchObject({ kind: "user_wallet", ownerId: who.userId, balance: 0, debt: 0 });
      expect((await ledger.openWallet(who)).id).toBe(wallet.id);
      expect((await ledger.openWallet({ teamId: who.userId })).id).not.toBe(wallet.id);
    });

    it("grants once per idempotency key and refuses the key with other parameters", async () => {
      const ledger = await newLedger();
      const wallet = await ledger.openWallet(owner());
      const key = `grant:${randomUUID()}`;
      const first = await ledger.grant({ account: wallet.id, amount: 5_000, idempotencyKey: key });
      expect(await ledger.grant({ account: wallet.id, amount: 5_000, idempotencyKey: key })).toEqual(first);
      await expect(ledger.grant({ account: wallet.id, amount: 6_000, idempotencyKey: key })).rejects.toMatchObject({ code: "idempotency_conflict" });
      await ledger.purchase({ account: wallet.id, amount: 1_000, idempotencyKey: `buy:${randomUUID()}` });
      expect(await balance(ledger, wallet.id)).toBe(6_000);
    });

    it("transfers between wallets, refusing more than the balance without moving anything", async () => {
      const ledger = await newLedger();
      const [a, b] = [await ledger.openWallet(owner()), await ledger.openWallet(owner())];
      await ledger.grant({ account: a.id, amount: 1_000, idempotencyKey: `g:${randomUUID()}` });
      await expect(ledger.transfer({ from: a.id, to: b.id, amount: 1_001, idempotencyKey: `t:${randomUUID()}` })).rejects.toMatchObject({ code: "insufficient_credits" });
      await ledger.transfer({ from: a.id, to: b.id, amount: 400, idempotencyKey: `t:${randomUUID()}` });
      expect([await balance(ledger, a.id), await balance(ledger, b.id)]).toEqual([600, 400]);
    });

    it("reserves, then settles or releases each reservation once", async () => {
      const ledger = await newLedger();
      const wallet = await ledger.openWallet(owner());
      await ledger.grant({ account: wallet.id, amount: 10_000, idempotencyKey: `g:${randomUUID()}` });
      const run = await ledger.reserve({ account: wallet.id, amount: 4_000, idempotencyKey: `r:${randomUUID()}`, ttlMs: 60_000 });
      expect(await balance(ledger, wallet.id)).toBe(6_000);
      await expect(ledger.reserve({ account: wallet.id, amount: 6_001, idempotencyKey: `r:${randomUUID()}`, ttlMs: 60_000 })).rejects.toMatchObject({
        code: "insufficient_credits",
      });
      const settled = await ledger.settle(run.id, 1_500);
      expect(settled).toMatchObject({ status: "settled", charged: 1_500, released: 2_500, shortfall: 0 });
      expect(await ledger.settle(run.id, 1_500)).toEqual(settled);
      await expect(ledger.release(run.id)).rejects.toMatchObject({ code: "reservation_closed" });
      expect(await balance(ledger, wallet.id)).toBe(8_500);

      const cancelled = await ledger.reserve({ account: wallet.id, amount: 2_000, idempotencyKey: `r:${randomUUID()}`, ttlMs: 60_000 });
      expect(await ledger.release(cancelled.id)).toMatchObject({ status: "released", charged: 0, released: 2_000 });
      expect(await balance(ledger, wallet.id)).toBe(8_500);
      await expect(ledger.getReservation(randomUUID())).rejects.toMatchObject({ code: "reservation_not_found" });
    });

    it("takes paid credits back after a refund, as debt when they were spent, and freezes the wallet until paid", async () => {
      const ledger = await newLedger();
      const wallet = await ledger.openWallet(owner());
      await ledger.purchase({ account: wallet.id, amount: 3_000, idempotencyKey: `p:${randomUUID()}` });
      const run = await ledger.reserve({ account: wallet.id, amount: 2_000, idempotencyKey: `r:${randomUUID()}`, ttlMs: 60_000 });
      await ledger.settle(run.id, 2_000);
      const reversal = await ledger.reverse({ account: wallet.id, amount: 3_000, idempotencyKey: `rev:${randomUUID()}`, reason: "refund" });
      expect(reversal).toMatchObject({ recovered: 1_000, debt: 2_000 });
      expect(await ledger.getAccount(wallet.id)).toMatchObject({ balance: 0, debt: 2_000 });
      await expect(ledger.reserve({ account: wallet.id, amount: 1, idempotencyKey: `r:${randomUUID()}`, ttlMs: 60_000 })).rejects.toMatchObject({ code: "wallet_in_debt" });
      await ledger.purchase({ account: wallet.id, amount: 2_500, idempotencyKey: `p:${randomUUID()}` });
      expect(await ledger.getAccount(wallet.id)).toMatchObject({ balance: 500, debt: 0 });
    });

    it("keeps the books balanced", async () => {
      const ledger = await newLedger();
      const wallet = await ledger.openWallet(owner());
      await ledger.grant({ account: wallet.id, amount: 700, idempotencyKey: `g:${randomUUID()}` });
      expect((await ledger.listEntries(wallet.id)).length).toBeGreaterThan(0);
      expect(await ledger.verify()).toMatchObject({ ok: true, sumOfEntries: 0, unbalancedTransactions: [], accountsOutOfStep: [], negativeWallets: [] });
    });
  });
}
