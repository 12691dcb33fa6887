import { randomUUID } from "node:crypto";
import { AuthError } from "../../errors.js";
import type { Principal } from "../../principal.js";
import type { AuthContext } from "./context.js";
import type { LoginSubject } from "../login-limiter.js";
import { digestsEqual, sha256Hex } from "../secrets.js";
import { newSmsCode, PHONE_NUMBER } from "../sms.js";
import { DuplicateError } from "../stores.js";
import { newTotpSecret } from "../totp.js";
import * as webauthn from "../webauthn.js";
import type { FactorList, MfaProof, Reauthentication, RequestMeta, TokenPair } from "./types.js";

/**
 * Second factors: enrolment (TOTP, SMS, passkeys), removal and the second login step. Starting an
 * enrolment and removing a factor re-authenticate the caller (see `Reauthentication`): the
 * password, or for an account without one a recent sign-in. Confirming an enrolment needs what
 * only its re-authenticated start handed out (the TOTP secret, the texted code, the challenge).
 */
export interface MfaService {
  completeMfaLogin(input: { challengeToken: string } & MfaProof, meta?: RequestMeta): Promise<TokenPair>;
  webauthnLoginOptions(challengeToken: string): Promise<Awaited<ReturnType<typeof webauthn.authenticationOptions>>>;
  sendLoginSms(challengeToken: string, factorId: string): Promise<void>;
  listFactors(principal: Principal): Promise<FactorList>;
  enrolTotp(principal: Principal, label?: string, reauth?: Reauthentication, meta?: RequestMeta): Promise<{ factorId: string; secret: string; otpauthUri: string }>;
  confirmTotp(principal: Principal, factorId: string, code: string, meta?: RequestMeta): Promise<{ recoveryCodes?: string[] }>;
  enrolSms(principal: Principal, phone: string, reauth?: Reauthentication, meta?: RequestMeta): Promise<{ factorId: string }>;
  confirmSms(principal: Principal, factorId: string, code: string, meta?: RequestMeta): Promise<{ recoveryCodes?: string[] }>;
  webauthnRegistrationOptions(principal: Principal, reauth?: Reauthentication, meta?: RequestMeta): Promise<Awaited<ReturnType<typeof webauthn.registrationOptions>>>;
  webauthnRegister(
    principal: Principal,
    response: webauthn.WebAuthnResponse,
    label: string | undefined,
    meta?: RequestMeta,
  ): Promise<{ factorId: string; recoveryCodes?: string[] }>;
  removeFactor(principal: Principal, factorId: string, password: string, meta?: RequestMeta): Promise<void>;
}


export function createMfaService(context: AuthContext): MfaService {
  const { config, stores, now, limiter, audit, notFound, reauthenticate, claimSmsSend, startSession, confirmedFactors, loadChallenge, normaliseRecoveryCode, confirmFactor, webauthnConfig, smsSender, acceptTotp, totpSecrets } = context;

  return {
    /**
     * Second login step: a challenge token plus one factor. The attempt is counted first, on the
     * challenge (at most `mfaMaxAttempts` checks, however many arrive at once) and against the
     * account's lockout; the counts are cleared only when the login completes.
     */
    async completeMfaLogin(input: { challengeToken: string } & MfaProof, meta: RequestMeta = {}): Promise<TokenPair> {
      const invalidChallenge = () => new AuthError("invalid_challenge", "MFA challenge is invalid or expired");
      const flow = await stores.flows.claimAttempt(sha256Hex(input.challengeToken), "mfa_login", config.mfaMaxAttempts, now());
      if (!flow?.userId) throw invalidChallenge();
      const user = await stores.users.findById(flow.userId);
      if (!user) throw invalidChallenge();
      const subject: LoginSubject = { account: user.email, ip: meta.ip };
      await limiter.begin(subject);
      const factors = await confirmedFactors(user.id);
      let used: string | undefined;
      if (input.method === "totp") {
        for (const factor of factors) {
          if (factor.kind === "totp" && (await acceptTotp(factor, input.code))) {
            used = factor.id;
            break;
          }
        }
      } else if (input.method === "recovery_code") {
        const hash = sha256Hex(normaliseRecoveryCode(input.code));
        if (await stores.mfa.consumeRecoveryCode(user.id, hash, now())) used = "recovery_code";
      } else if (input.method === "sms") {
        const expected = flow.data.smsCodeHash;
        // The code is only as good as the factor it was sent for: deleted or re-numbered, it is void.
        const factor = factors.find((f) => f.kind === "sms" && f.id === flow.data.smsFactorId && f.phone === flow.data.smsPhone);
        if (typeof expected === "string" && factor && digestsEqual(sha256Hex(input.code.trim()), expected)) used = factor.id;
      } else {
        const options = webauthnConfig();
        const expected = flow.data.webauthnChallenge;
        const factor = factors.find((f) => f.kind === "webauthn" && f.credentialId === input.response.id);
        if (typeof expected === "string" && factor) {
          const result = await webauthn.verifyAuthentication(options, input.response, expected, factor).catch(() => undefined);
          if (result && (await stores.mfa.updateCounter(factor.id, result.newCounter))) used = factor.id;
        }
      }
      if (!used) {
        if (flow.attempts >= config.mfaMaxAttempts) await stores.flows.delete(flow.id);
        await audit(meta, { tenantId: null, actorId: user.id, action: "auth.mfa", target: `user:${user.id}`, result: "failure", details: { method: input.method } });
        throw new AuthError("invalid_mfa_code", "The second factor was not accepted");
      }
      // Consuming the challenge makes it single-use even if two requests raced past the checks.
      if (!(await stores.flows.take(flow.id, "mfa_login", now()))) throw invalidChallenge();
      await limiter.reset(subject);
      const teamId = typeof flow.data.teamId === "string" ? flow.data.teamId : null;
      const pair = await startSession(user.id, teamId, meta);
      await audit(meta, { tenantId: teamId, actorId: user.id, action: "auth.login", target: `session:${pair.sessionId}`, result: "success", details: { via: flow.data.via, mfa: input.method } });
      if (input.method === "recovery_code") {
        await audit(meta, { tenantId: teamId, actorId: user.id, action: "mfa.recovery_code_used", target: `user:${user.id}`, result: "success" });
      }
      return pair;
    },

    /** WebAuthn assertion options for the second login step. */
    async webauthnLoginOptions(challengeToken: string) {
      const options = webauthnConfig();
      const { flow, user } = await loadChallenge(challengeToken);
      const factors = (await confirmedFactors(user.id)).filter((f) => f.kind === "webauthn");
      if (factors.length === 0) throw new AuthError("no_webauthn_factor", "No security key is registered");
      const request = await webauthn.authenticationOptions(options, factors);
      await stores.flows.update(flow.id, { ...flow.data, webauthnChallenge: request.challenge });
      return request;
    },

    /** Sends a login code to an enrolled phone for the second login step. */
    async sendLoginSms(challengeToken: string, factorId: string) {
      const sender = smsSender();
      const { flow, user } = await loadChallenge(challengeToken);
      const factor = (await confirmedFactors(user.id)).find((f) => f.id === factorId && f.kind === "sms");
      if (!factor?.phone) throw notFound("Factor");
      await claimSmsSend(user.id, factor.phone, flow.id);
      const code = newSmsCode();
      await stores.flows.update(flow.id, { ...flow.data, smsCodeHash: sha256Hex(code), smsFactorId: factor.id, smsPhone: factor.phone });
      await sender.send(factor.phone, `Your keen sign-in code is ${code}`);
    },

    async listFactors(principal: Principal) {
      const factors = await stores.mfa.factors(principal.userId);
      return {
        factors: factors.map((f) => ({ id: f.id, kind: f.kind, label: f.label, confirmed: f.confirmedAt !== null, createdAt: f.createdAt.toISOString() })),
        recoveryCodesLeft: await stores.mfa.remainingRecoveryCodes(principal.userId),
      };
    },

    async enrolTotp(principal: Principal, label?: string, reauth: Reauthentication = {}, meta: RequestMeta = {}) {
      const user = await reauthenticate(principal, reauth, meta);
      const { secret, uri } = newTotpSecret(user.email, config.totpIssuer);
      const id = randomUUID();
      // Sealed at rest (when keys are configured) and bound to this factor's id.
      const sealed = totpSecrets.seal(id, secret);
      await stores.mfa.addFactor(
        { id, userId: user.id, kind: "totp", label: label ?? "Authenticator app", secret: sealed.secret, secretKeyId: sealed.keyId, phone: null, credentialId: null, publicKey: null, counter: 0, transports: [], lastUsedStep: 0, confirmedAt: null },
        now(),
      );
      return { factorId: id, secret, otpauthUri: uri };
    },

    /** Confirms an enrolment with a first code; the first confirmed factor also yields recovery codes. */
    async confirmTotp(principal: Principal, factorId: string, code: string, meta: RequestMeta = {}) {
      const factor = await stores.mfa.findFactor(factorId);
      if (!factor || factor.userId !== principal.userId || factor.kind !== "totp" || factor.confirmedAt) throw notFound("Factor");
      if (!(await acceptTotp(factor, code))) {
        throw new AuthError("invalid_enrolment_code", "The code is not valid");
      }
      return confirmFactor(principal, factor, meta);
    },

    async enrolSms(principal: Principal, phone: string, reauth: Reauthentication = {}, meta: RequestMeta = {}) {
      const sender = smsSender();
      if (!PHONE_NUMBER.test(phone)) throw new AuthError("invalid_request", "Phone number must be in E.164 form, e.g. +447700900123");
      await reauthenticate(principal, reauth, meta);
      await claimSmsSend(principal.userId, phone);
      const id = randomUUID();
      const at = now();
      const code = newSmsCode();
      await stores.mfa.addFactor(
        { id, userId: principal.userId, kind: "sms", label: `SMS ${phone.slice(0, 3)}…${phone.slice(-2)}`, secret: null, secretKeyId: null, phone, credentialId: null, publicKey: null, counter: 0, transports: [], lastUsedStep: 0, confirmedAt: null },
        at,
      );
      await stores.flows.put({ id: `sms_enrol:${id}`, kind: "sms_enrol", userId: principal.userId, data: { codeHash: sha256Hex(code) }, attempts: 0, expiresAt: new Date(at.getTime() + config.mfaChallengeTtlSeconds * 1000) }, at);
      await sender.send(phone, `Your keen verification code is ${code}`);
      return { factorId: id };
    },

    async confirmSms(principal: Principal, factorId: string, code: string, meta: RequestMeta = {}) {
      const factor = await stores.mfa.findFactor(factorId);
      if (!factor || factor.userId !== principal.userId || factor.kind !== "sms" || factor.confirmedAt) throw notFound("Factor");
      const flowId = `sms_enrol:${factor.id}`;
      // Counted before the comparison, atomically: concurrent guesses get mfaMaxAttempts checks in all.
      const flow = await stores.flows.claimAttempt(flowId, "sms_enrol", config.mfaMaxAttempts, now());
      if (!flow || flow.userId !== principal.userId || !digestsEqual(sha256Hex(code.trim()), String(flow.data.codeHash))) {
        if (flow && flow.attempts >= config.mfaMaxAttempts) await stores.flows.delete(flowId);
        throw new AuthError("invalid_enrolment_code", "The code is not valid");
      }
      await stores.flows.delete(flowId);
      return confirmFactor(principal, factor, meta);
    },

    async webauthnRegistrationOptions(principal: Principal, reauth: Reauthentication = {}, meta: RequestMeta = {}) {
      const options = webauthnConfig();
      const user = await reauthenticate(principal, reauth, meta);
      const request = await webauthn.registrationOptions(options, user, await stores.mfa.factors(user.id));
      const at = now();
      await stores.flows.put({ id: sha256Hex(request.challenge), kind: "webauthn_register", userId: user.id, data: {}, attempts: 0, expiresAt: new Date(at.getTime() + config.mfaChallengeTtlSeconds * 1000) }, at);
      return request;
    },

    async webauthnRegister(principal: Principal, response: webauthn.WebAuthnResponse, label: string | undefined, meta: RequestMeta = {}) {
      const options = webauthnConfig();
      const challenge = webauthn.challengeOf(response);
      const flow = challenge ? await stores.flows.take(sha256Hex(challenge), "webauthn_register", now()) : undefined;
      if (!challenge || !flow || flow.userId !== principal.userId) throw new AuthError("invalid_registration_challenge", "Registration challenge is invalid or expired");
      const verified = await webauthn.verifyRegistration(options, response, challenge).catch(() => undefined);
      if (!verified) throw new AuthError("webauthn_failed", "The security key response could not be verified");
      const id = randomUUID();
      const at = now();
      try {
        await stores.mfa.addFactor(
          { id, userId: principal.userId, kind: "webauthn", label: label ?? "Security key", secret: null, secretKeyId: null, phone: null, credentialId: verified.credentialId, publicKey: verified.publicKey, counter: verified.counter, transports: verified.transports, lastUsedStep: 0, confirmedAt: null },
          at,
        );
      } catch (error) {
        if (error instanceof DuplicateError) throw new AuthError("credential_exists", "That security key is already registered");
        throw error;
      }
      const factor = (await stores.mfa.findFactor(id))!;
      return { factorId: id, ...(await confirmFactor(principal, factor, meta)) };
    },

    async removeFactor(principal: Principal, factorId: string, password: string, meta: RequestMeta = {}) {
      const factor = await stores.mfa.findFactor(factorId);
      if (!factor || factor.userId !== principal.userId) throw notFound("Factor");
      const user = await reauthenticate(principal, { password }, meta);
      await stores.mfa.deleteFactor(factor.id);
      if ((await confirmedFactors(user.id)).length === 0) await stores.mfa.replaceRecoveryCodes(user.id, [], now());
      await audit(meta, { tenantId: principal.teamId ?? null, actorId: user.id, action: "mfa.disable", target: `mfa_factor:${factor.id}`, result: "success", details: { kind: factor.kind } });
    },
  };
}
