import { authenticator } from "otplib";

const STEP_SECONDS = 30;

/**
 * A TOTP secret (base32, 160 bits) and its `otpauth://` enrolment URI for authenticator apps.
 *
 * @example
 * const { secret, uri } = newTotpSecret("ada@example.com", "keen");
 */
export function newTotpSecret(account: string, issuer: string): { secret: string; uri: string } {
  const secret = authenticator.generateSecret(20);
  return { secret, uri: authenticator.keyuri(account, issuer, secret) };
}

/**
 * The RFC 6238 time step a code matches, allowing one step either side for clock drift, or
 * undefined when it matches none. Callers store the step to refuse the same code twice.
 *
 * @example
 * const step = matchTotpStep(secret, "123456", new Date());
 */
export function matchTotpStep(secret: string, code: string, at: Date): number | undefined {
  if (!/^\d{6}$/.test(code)) return undefined;
  const checker = authenticator.clone({ window: 1, step: STEP_SECONDS, epoch: at.getTime() });
  let delta: number | null;
  try {
    delta = checker.checkDelta(code, secret);
  } catch {
    return undefined;
  }
  if (delta === null) return undefined;
  return Math.floor(at.getTime() / 1000 / STEP_SECONDS) + delta;
}

/**
 * The current code for a secret (for tests and for software authenticators).
 *
 * @example
 * totpCode(secret, new Date()); // "492039"
 */
export function totpCode(secret: string, at: Date): string {
  return authenticator.clone({ step: STEP_SECONDS, epoch: at.getTime() }).generate(secret);
}
