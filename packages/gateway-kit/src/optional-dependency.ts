import { createRequire } from "node:module";
import { GatewayError } from "./errors.js";

/**
 * The packages gateway-kit loads only where a feature needs them. They are optional peer
 * dependencies: a host that uses only JWT auth does not install Stripe or PGlite.
 */
export const OPTIONAL_DEPENDENCIES = {
  pg: "PostgreSQL connections (openDatabase with a url)",
  "@electric-sql/pglite": "the embedded database (openDatabase without a url)",
  stripe: "Stripe billing (createStripeClient)",
  "@node-rs/argon2": "password hashing (createPasswordHasher)",
  "@simplewebauthn/server": "passkeys (WebAuthn factors)",
  "tar-stream": "tar upload screening (screenArchive)",
  yauzl: "zip upload screening (screenArchive)",
} as const;

export type OptionalDependency = keyof typeof OPTIONAL_DEPENDENCIES;

/** Thrown when a feature's optional peer dependency is not installed; `code` is `missing_dependency`. */
export class MissingDependencyError extends GatewayError {
  declare readonly code: "missing_dependency";
  constructor(
    readonly packageName: OptionalDependency,
    cause?: unknown,
  ) {
    super("missing_dependency", `${OPTIONAL_DEPENDENCIES[packageName]} needs the package "${packageName}": install it with npm install ${packageName}`, {
      details: { packageName },
      cause,
    });
    this.name = "MissingDependencyError";
  }
}

const require = createRequire(import.meta.url);

/**
 * Loads an optional peer dependency synchronously, for the few APIs that return its objects
 * directly (`createStripeClient`); names the package to install when it is missing.
 */
export function requireOptional<T>(name: OptionalDependency): T {
  try {
    const loaded = require(name) as T & { default?: unknown };
    // A CommonJS module's exports, shaped like the ESM namespace the caller's type describes.
    return (loaded.default === undefined ? { ...loaded, default: loaded } : loaded) as T;
  } catch (error) {
    if ((error as NodeJS.ErrnoException)?.code === "MODULE_NOT_FOUND") throw new MissingDependencyError(name, error);
    throw error;
  }
}

const loaded = new Map<string, Promise<unknown>>();

/**
 * Imports an optional peer dependency the first time a feature needs it, and names the package
 * to install when it is missing.
 *
 * @example
 * const { default: pg } = await loadOptional<typeof import("pg")>("pg");
 */
export function loadOptional<T>(name: OptionalDependency): Promise<T> {
  let pending = loaded.get(name);
  if (!pending) {
    pending = import(name).catch((error: NodeJS.ErrnoException) => {
      loaded.delete(name);
      if (error?.code === "ERR_MODULE_NOT_FOUND" || error?.code === "MODULE_NOT_FOUND") throw new MissingDependencyError(name, error);
      throw error;
    });
    loaded.set(name, pending);
  }
  return pending as Promise<T>;
}
