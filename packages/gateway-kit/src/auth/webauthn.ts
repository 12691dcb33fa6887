import type {
  AuthenticationResponseJSON,
  AuthenticatorTransportFuture,
  PublicKeyCredentialCreationOptionsJSON,
  PublicKeyCredentialRequestOptionsJSON,
  RegistrationResponseJSON,
} from "@simplewebauthn/server";
import * as z from "zod";
import { loadOptional } from "../optional-dependency.js";
import type { MfaFactorRecord } from "./stores.js";

const simpleWebAuthn = () => loadOptional<typeof import("@simplewebauthn/server")>("@simplewebauthn/server");

/** Relying-party settings for WebAuthn. */
export const WebAuthnOptions = z
  .object({
    /** The RP ID: the site's registrable domain, e.g. `example.com`. */
    rpID: z.string().min(1),
    rpName: z.string().min(1),
    /** Origins the browser ceremony may come from, e.g. `https://app.example.com`. */
    origins: z.array(z.url()).min(1),
  })
  .strict();
export type WebAuthnOptions = z.infer<typeof WebAuthnOptions>;

/** The browser's JSON for a credential (shape checked loosely; the library checks the rest). */
export const WebAuthnResponse = z
  .object({
    id: z.string().min(1).max(1024),
    rawId: z.string().min(1).max(1024),
    type: z.literal("public-key"),
    response: z.record(z.string(), z.unknown()),
    clientExtensionResults: z.record(z.string(), z.unknown()).default({}),
    authenticatorAttachment: z.string().optional(),
  })
  .passthrough();
export type WebAuthnResponse = z.infer<typeof WebAuthnResponse>;

/** Reads the challenge the browser signed, from `response.clientDataJSON`. */
export function challengeOf(response: WebAuthnResponse): string | undefined {
  const clientData = response.response.clientDataJSON;
  if (typeof clientData !== "string") return undefined;
  try {
    const parsed = JSON.parse(Buffer.from(clientData, "base64url").toString("utf8")) as { challenge?: unknown };
    return typeof parsed.challenge === "string" ? parsed.challenge : undefined;
  } catch {
    return undefined;
  }
}

export async function registrationOptions(
  options: WebAuthnOptions,
  user: { id: string; email: string },
  existing: MfaFactorRecord[],
): Promise<PublicKeyCredentialCreationOptionsJSON> {
  return (await simpleWebAuthn()).generateRegistrationOptions({
    rpName: options.rpName,
    rpID: options.rpID,
    userName: user.email,
    userID: new TextEncoder().encode(user.id),
    attestationType: "none",
    excludeCredentials: existing
      .filter((f) => f.kind === "webauthn" && f.credentialId)
      .map((f) => ({ id: f.credentialId!, transports: f.transports as AuthenticatorTransportFuture[] })),
    authenticatorSelection: { residentKey: "discouraged", userVerification: "preferred" },
  });
}

export async function verifyRegistration(options: WebAuthnOptions, response: WebAuthnResponse, expectedChallenge: string) {
  const result = await (await simpleWebAuthn()).verifyRegistrationResponse({
    response: response as unknown as RegistrationResponseJSON,
    expectedChallenge,
    expectedOrigin: options.origins,
    expectedRPID: options.rpID,
    requireUserVerification: false,
  });
  if (!result.verified) return undefined;
  const { credential } = result.registrationInfo;
  return {
    credentialId: credential.id,
    publicKey: Buffer.from(credential.publicKey).toString("base64url"),
    counter: credential.counter,
    transports: (credential.transports ?? []) as string[],
  };
}

export async function authenticationOptions(options: WebAuthnOptions, factors: MfaFactorRecord[]): Promise<PublicKeyCredentialRequestOptionsJSON> {
  return (await simpleWebAuthn()).generateAuthenticationOptions({
    rpID: options.rpID,
    allowCredentials: factors
      .filter((f) => f.kind === "webauthn" && f.credentialId)
      .map((f) => ({ id: f.credentialId!, transports: f.transports as AuthenticatorTransportFuture[] })),
    userVerification: "preferred",
  });
}

export async function verifyAuthentication(
  options: WebAuthnOptions,
  response: WebAuthnResponse,
  expectedChallenge: string,
  factor: MfaFactorRecord,
): Promise<{ newCounter: number } | undefined> {
  const result = await (await simpleWebAuthn()).verifyAuthenticationResponse({
    response: response as unknown as AuthenticationResponseJSON,
    expectedChallenge,
    expectedOrigin: options.origins,
    expectedRPID: options.rpID,
    requireUserVerification: false,
    credential: {
      id: factor.credentialId!,
      publicKey: new Uint8Array(Buffer.from(factor.publicKey ?? "", "base64url")),
      counter: factor.counter,
      transports: factor.transports as AuthenticatorTransportFuture[],
    },
  });
  return result.verified ? { newCounter: result.authenticationInfo.newCounter } : undefined;
}
