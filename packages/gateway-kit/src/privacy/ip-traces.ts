import { sql, type Kysely } from "kysely";
import { createAuditLog } from "../audit/index.js";
import { ipLimitKey, normaliseIp } from "../http/index.js";
import { IPV6_PREFIX_LENGTHS } from "../http/internal.js";

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
 * Every key a limiter may have counted `ip` under: the raw address (as older versions keyed it)
 * and `ipLimitKey` at each prefix length a limiter can be set to, since the erasure cannot know
 * what each limiter was configured with when it counted.
 */
function limitKeysOf(ip: string): string[] {
  const normal = normaliseIp(ip);
  if (!normal) return [ip];
  const keys = new Set([ip, ipLimitKey(normal)]);
  if (normal.includes(":")) for (let bits = IPV6_PREFIX_LENGTHS.min; bits <= IPV6_PREFIX_LENGTHS.max; bits++) keys.add(ipLimitKey(normal, bits));
  return [...keys];
}

/** Splits `items` into chunks of `size`, so a statement's parameter list stays bounded. */
const chunks = <T>(items: readonly T[], size: number): T[][] => Array.from({ length: Math.ceil(items.length / size) }, (_, i) => items.slice(i * size, (i + 1) * size));

/**
 * Removes what the gateway keeps keyed by a user's addresses and id: login lockout counters and
 * rate-limit buckets (keyed as the limiters key them, by `ipLimitKey`: an IPv6 client by its
 * prefix, at whatever length the limiter was set to; `…:user:<id>`; the raw address too, as older
 * versions keyed it) and the personal fields of audit rows recorded from those addresses (the
 * unauthenticated signup and login requests included; rows of other people from the same address
 * are scrubbed too, their action and time stay). Tables a host did not migrate are skipped.
 */
export async function eraseIpTraces(db: Kysely<any>, userId: string, ips: readonly string[], at: Date): Promise<void> {
  const ipKeys = [...new Set(ips.flatMap(limitKeysOf))].filter((key) => key !== "unknown");
  if (ipKeys.length > 0 && (await tableExists(db, "login_attempts"))) {
    for (const part of chunks(ipKeys, 1000)) await db.deleteFrom("login_attempts").where("key", "in", part.map((key) => `ip:${key}`)).execute();
  }
  if (await tableExists(db, "rate_limit_buckets")) {
    await db.deleteFrom("rate_limit_buckets").where("key", "like", `%:user:${escapeLike(userId)}`).execute();
    // A bucket's key is `<limit name>:ip:<ipLimitKey>`; names hold no colon.
    const addressOf = sql<string>`substring(key from position(':ip:' in key) + 4)`;
    for (const part of chunks(ipKeys, 1000)) {
      await db.deleteFrom("rate_limit_buckets").where("key", "like", "%:ip:%").where(addressOf, "in", part).execute();
    }
  }
  if (ips.length > 0 && (await tableExists(db, "audit_log"))) await createAuditLog(db, { now: () => at }).scrub({ ips: [...ips] });
}

const escapeLike = (text: string) => text.replace(/[\\%_]/g, (c) => `\\${c}`);
