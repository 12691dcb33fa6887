import type { Kysely } from "kysely";

/**
 * One module's part in a user's data rights: what it exports for the user and how it
 * erases or anonymises that user's personal data. The auth store, the credits ledger and
 * the audit log each provide one; a host app adds its own for its tables.
 *
 * `erase` runs inside the erasure transaction it is given, so either every contributor's
 * erasure lands or none does.
 */
export interface DataRightsContributor {
  /** Key of this contributor's section in the export archive, e.g. `auth`, `credits`, `audit`. */
  readonly name: string;
  /** Everything this module holds about the user, JSON-serialisable. */
  export(db: Kysely<any>, userId: string): Promise<unknown>;
  /** Removes or anonymises the user's personal data; totals and hash chains must stay verifiable. */
  erase(db: Kysely<any>, userId: string): Promise<void>;
}
