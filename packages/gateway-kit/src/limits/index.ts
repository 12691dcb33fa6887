export { limitMigrations } from "./migrations.js";
export type { LimitTables } from "./tables.js";
export {
  bucketResult,
  createKyselyRateLimitStore,
  createMemoryRateLimitStore,
  storedRateLimitKey,
  type RateLimitResult,
  type RateLimitRule,
  type RateLimitStore,
} from "./rate-limit-store.js";
export { rateLimit, type RateLimitOptions, type RateLimitState } from "./rate-limit.js";
export {
  ConcurrencyLimitError,
  createKyselyRunSlotStore,
  createMemoryRunSlotStore,
  createRunSlots,
  RunSlotLostError,
  type RunSlot,
  type RunSlots,
  type RunSlotsOptions,
  type RunSlotStore,
  type SlotAcquireResult,
  type SlotHold,
} from "./run-slots.js";
export { concurrencyLimit, type ConcurrencyLimitOptions } from "./concurrency-limit.js";
export {
  enforceDirectoryQuotas,
  enforceQuota,
  measureDirectory,
  meteredBody,
  quota,
  QuotaExceededError,
  QuotaName,
  type DirectoryUsage,
  type MeasureOptions,
  type QuotaOptions,
} from "./quota.js";
export {
  anomalyGuard,
  createAnomalyDetector,
  createKyselyAnomalyStateStore,
  createMemoryAnomalyStateStore,
  UsageAnomalyError,
  type AnomalyDetector,
  type AnomalyDetectorOptions,
  type AnomalyEvent,
  type AnomalyGuardOptions,
  type AnomalyState,
  type AnomalyStateStore,
  type AnomalyVerdict,
} from "./anomaly.js";
