export { validate, type FieldIssue, type RequestPart, type RequestSchemas, type ValidatedRequest } from "./validate.js";
export {
  defaultInstructionRules,
  findInstructionViolation,
  normaliseInstruction,
  collectBodyText,
  type BodyTextLimits,
  patternRule,
  screenInstructions,
  type InstructionRule,
  type InstructionViolation,
  type ScreenInstructionsOptions,
} from "./instructions.js";
export {
  authOwnerSecretFields,
  defaultSecretPatterns,
  markOwnerSecrets,
  ownerSecrets,
  type RedactStreamOptions,
  defaultSensitiveKeys,
  redactResponses,
  redactSecrets,
  redactSecretsDeep,
  redactStream,
  type RedactDeepOptions,
  type RedactOptions,
  type SecretPattern,
} from "./redact.js";
export {
  ArchiveLimits,
  ArchiveRejectedError,
  screenArchive,
  screenUploads,
  ARCHIVE_PROBLEMS,
  type ArchiveProblem,
  type ArchiveReport,
  type ScreenedUpload,
} from "./uploads.js";
