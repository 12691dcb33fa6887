import { randomUUID } from "node:crypto";
import { AuthError } from "../../errors.js";
import type { Principal } from "../../principal.js";
import type { AuthContext } from "./context.js";
import type { RequestMeta } from "./types.js";

/** Recovery codes: the way back in when every second factor is lost. */
export interface RecoveryService {
  /** Replaces the user's recovery codes (after re-authentication, see `Reauthentication`); the old ones stop working. */
  regenerateRecoveryCodes(principal: Principal, password: string, meta?: RequestMeta): Promise<string[]>;
}


export function createRecoveryService(context: AuthContext): RecoveryService {
  const { audit, reauthenticate, confirmedFactors, issueRecoveryCodes } = context;

  return {
    async regenerateRecoveryCodes(principal: Principal, password: string, meta: RequestMeta = {}) {
      const user = await reauthenticate(principal, { password }, meta);
      if ((await confirmedFactors(user.id)).length === 0) throw new AuthError("mfa_not_enrolled", "Enrol a second factor first");
      const codes = await issueRecoveryCodes(user.id);
      await audit(meta, { tenantId: principal.teamId ?? null, actorId: user.id, action: "mfa.recovery_codes", target: `user:${user.id}`, result: "success" });
      return codes;
    },
  };
}
