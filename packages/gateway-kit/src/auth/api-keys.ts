import { digestsEqual, randomBase32, randomToken, sha256Hex } from "./secrets.js";

const API_KEY = /^keen_([a-z2-7]{12})_([A-Za-z0-9_-]{43})$/;

/** A freshly minted API key: the full key (shown once), its lookup prefix and the hash to store. */
export interface MintedApiKey {
  key: string;
  prefix: string;
  secretHash: string;
}

/**
 * Mints `keen_<prefix>_<secret>`: a 60-bit lookup prefix and a 256-bit secret. Only the SHA-256
 * of the secret is stored; with that much entropy a slow hash adds cost and no safety.
 *
 * @example
 * const { key, prefix, secretHash } = mintApiKey(); // key: "keen_k3j5h2m4n6p7_Zx..."
 */
export function mintApiKey(): MintedApiKey {
  const prefix = randomBase32(12);
  const secret = randomToken(32);
  return { key: `keen_${prefix}_${secret}`, prefix, secretHash: sha256Hex(secret) };
}

/**
 * Splits an API key into prefix and secret, or returns undefined when it is not one.
 *
 * @example
 * parseApiKey("keen_k3j5h2m4n6p7_Zx..."); // { prefix: "k3j5h2m4n6p7", secret: "Zx..." }
 */
export function parseApiKey(value: string): { prefix: string; secret: string } | undefined {
  const match = API_KEY.exec(value);
  return match ? { prefix: match[1]!, secret: match[2]! } : undefined;
}

/** True when `value` has the shape of a keen API key (it may still be wrong). */
export function looksLikeApiKey(value: string): boolean {
  return API_KEY.test(value);
}

// Compared against when the prefix is unknown, so a miss costs the same hash and comparison as a hit.
const DUMMY_HASH = sha256Hex(randomToken(32));

/**
 * Checks a presented secret against a stored hash (or the dummy when `storedHash` is undefined)
 * in constant time.
 *
 * @example
 * secretMatches(parsed.secret, record?.secretHash); // false for unknown prefixes, after the same work
 */
export function secretMatches(secret: string, storedHash: string | undefined): boolean {
  const presented = sha256Hex(secret);
  const matches = digestsEqual(presented, storedHash ?? DUMMY_HASH);
  return storedHash !== undefined && matches;
}

/**
 * A small bounded cache of verified key records, so hot keys skip the database for a few
 * seconds. Revocations made through the same process evict immediately; others take effect
 * within `ttlMs`.
 *
 * Every eviction starts a new generation. A lookup takes the generation before it reads the
 * database and hands it to `set`, which stores nothing when an eviction happened since: a read
 * that began before a revocation finished after it would otherwise put the revoked key back for
 * a whole `ttlMs`.
 *
 * @example
 * const generation = cache.generation();
 * const record = await store.findForVerification(prefix);
 * if (record) cache.set(prefix, record, generation); // dropped if evicted meanwhile
 */
export class ApiKeyCache<T> {
  private readonly entries = new Map<string, { value: T; expiresAt: number }>();
  private current = 0;
  constructor(
    private readonly ttlMs: number,
    private readonly maxEntries: number,
    private readonly clock: () => number,
  ) {}

  get(prefix: string): T | undefined {
    if (this.ttlMs <= 0) return undefined;
    const entry = this.entries.get(prefix);
    if (!entry) return undefined;
    if (entry.expiresAt <= this.clock()) {
      this.entries.delete(prefix);
      return undefined;
    }
    return entry.value;
  }

  /** The generation to pass to `set` for a record about to be read. */
  generation(): number {
    return this.current;
  }

  /** Stores `value` unless an eviction happened after `generation` was taken. */
  set(prefix: string, value: T, generation: number): void {
    if (this.ttlMs <= 0 || generation !== this.current) return;
    if (this.entries.size >= this.maxEntries) {
      // Maps iterate in insertion order: drop the oldest entry.
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    this.entries.set(prefix, { value, expiresAt: this.clock() + this.ttlMs });
  }

  delete(prefix: string): void {
    this.current += 1;
    this.entries.delete(prefix);
  }

  /**
   * Drops every entry `matches` selects, e.g. all keys of one user. Lookups in flight are
   * not stored either, whether or not anything cached matched (theirs is not cached yet).
   */
  evict(matches: (value: T) => boolean): void {
    this.current += 1;
    for (const [prefix, entry] of this.entries) if (matches(entry.value)) this.entries.delete(prefix);
  }

  clear(): void {
    this.current += 1;
    this.entries.clear();
  }
}
