export type { DataRightsContributor } from "./contributor.js";
export { DataRightsConfigError, eraseUserData, exportUserData, type EraseUserDataOptions, type UserDataExport, type UserErasureReport } from "./data-rights.js";
export { authDataRights, erasedEmail } from "./auth-contributor.js";
export { auditDataRights } from "./audit-contributor.js";
export { gatewayRetentionRules, purgeExpired, RetentionSettings, type RetentionRule } from "./retention.js";
