export { AUTH_ERROR_CODES, AuthError, type AuthErrorCode } from "../errors.js";
export { authMigrations } from "./migrations.js";
export type { AuthTables } from "./tables.js";
export {
  DuplicateError,
  type ApiKeyRecord,
  type ApiKeyStore,
  type AuthFlowRecord,
  type AuthFlowStore,
  type AuthStores,
  type FactorKind,
  type LoginAttemptState,
  type LoginAttemptStore,
  type MembershipRecord,
  type MfaFactorRecord,
  type MfaStore,
  type OAuthAccountStore,
  type RefreshTokenRecord,
  type RefreshTokenStore,
  type SessionRecord,
  type TeamRecord,
  type TeamStore,
  type UserRecord,
  type UserStore,
} from "./stores.js";
export { createKyselyAuthStores } from "./kysely-stores.js";
export { createPasswordHasher, normaliseEmail, Email, NewPassword, PasswordHashingOptions, type PasswordHasher } from "./password.js";
export {
  ACCESS_TOKEN_TYPE,
  AccessTokenOptions,
  createAccessTokens,
  JwtAlgorithm,
  JwtKeySet,
  type AccessTokenClaims,
  type AccessTokens,
} from "./jwt.js";
export { mintApiKey, parseApiKey, looksLikeApiKey, secretMatches, type MintedApiKey } from "./api-keys.js";
export { Permission, Role, ROLE_PERMISSIONS, permissionsForRole, effectiveScopes } from "./permissions.js";
export { createLoginLimiter, LoginLimiterOptions, type LoginLimiter, type LoginSubject } from "./login-limiter.js";
export { matchTotpStep, newTotpSecret, totpCode } from "./totp.js";
export { PHONE_NUMBER, newSmsCode, type SmsSender } from "./sms.js";
export { WebAuthnOptions, WebAuthnResponse } from "./webauthn.js";
export { MailMessage, parseMailMessage, type Mailer } from "../mailer.js";
export { OAuthProviderName, OAuthProviderOptions, pkceChallenge, type OAuthProfile } from "./oauth.js";
export {
  AuthServiceOptions,
  createAuthService,
  EmailVerificationOptions,
  type EmailVerificationRequest,
  type EmailVerificationResult,
  type EmailVerificationService,
  MfaProof,
  type ApiKeyView,
  type AuthService,
  type LoginResult,
  type Reauthentication,
  type RequestMeta,
  type TokenPair,
} from "./auth-service.js";
export { authenticate, requireScope, requirePermission, loadInTenant, type AuthenticateOptions } from "./authenticate.js";
export {
  authRouter,
  ChallengeBody,
  CreateApiKeyBody,
  EmailVerificationConfirmBody,
  FactorCodeBody,
  LoginBody,
  LogoutBody,
  MfaLoginBody,
  OAuthCallbackQuery,
  PasswordChangeBody,
  PasswordConfirmBody,
  RefreshBody,
  SignOutEverywhereBody,
  SignupBody,
  SmsEnrolBody,
  SmsLoginBody,
  TotpEnrolBody,
  WebAuthnRegisterBody,
  type AuthRouterOptions,
} from "./auth-router.js";
