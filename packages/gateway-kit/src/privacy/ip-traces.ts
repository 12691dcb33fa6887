import { sql, type Kysely } from "kysely";
import { createAuditLog } from "../audit/index.js";
import { ipLimitKey } from "../http/index.js";

/** Whether a table exists in the current search path (a host may not run every module's migrations). */
export async function tableExists(db: Kysely<any>, table: string): Promise<boolean> {
  const { rows } = await sql<{ present: boolean }>`select to_regclass(${table}) is not null as present`.execute(db);
  return rows[0]?.present === true;
}

/**
 * Every client address the gateway recorded for a user: their sessions' IPs and the IPs of audit
 * rows they performed or that name them (signup, login, failed logins).
 */
export async function userIpAddresses(db: Kysely<any>, userId: string): Promise<string[]> {
  const ips = new Set<string>();
  if (await tableExists(db, "auth_sessions")) {
    const rows = await db.selectFrom("auth_sessions").select("ip").distinct().where("user_id", "=", userId).where("ip", "is not", null).execute();
    for (const r of rows) ips.add(r.ip as string);
  }
  if (await tableExists(db, "audit_log")) {
    for (const ip of await createAuditLog(db).subjectAddresses(userId)) ips.add(ip);
  }
  return [...ips].sort();
}

/**
 * Removes what the gateway keeps keyed by a user's addresses and id: login lockout counters and
 * rate-limit buckets (keyed as the limiters key them, by `ipLimitKey`: an IPv6 client by its /64;
 * `…:user:<id>`; the raw address too, as older versions keyed it) and the personal fields
 * of audit rows recorded from those addresses (the unauthenticated signup and login requests
 * included; rows of other people from the same address are scrubbed too, their action and time
 * stay). Tables a host did not migrate are skipped.
 */
export async function eraseIpTraces(db: Kysely<any>, userId: string, ips: readonly string[], at: Date): Promise<void> {
  // The key the limiters use (see `ipLimitKey`) and the raw address, which earlier versions used.
  const ipKeys = [...new Set(ips.flatMap((ip) => [ip, ipLimitKey(ip)]))].filter((key) => key !== "unknown");
  if (ipKeys.length > 0 && (await tableExists(db, "login_attempts"))) {
    await db.deleteFrom("login_attempts").where("key", "in", ipKeys.map((key) => `ip:${key}`)).execute();
  }
  if (await tableExists(db, "rate_limit_buckets")) {
    const patterns = [`%:user:${escapeLike(userId)}`, ...ipKeys.map((key) => `%:ip:${escapeLike(key)}`)];
    await db
      .deleteFrom("rate_limit_buckets")
      .where((eb) => eb.or(patterns.map((p) => eb("key", "like", p))))
      .execute();
  }
  if (ips.length > 0 && (await tableExists(db, "audit_log"))) await createAuditLog(db, { now: () => at }).scrub({ ips: [...ips] });
}

const escapeLike = (text: string) => text.replace(/[\\%_]/g, (c) => `\\${c}`);
