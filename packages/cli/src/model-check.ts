import { ModelUnavailableError } from "./cli-error.js";

// Defined beside the other CLI errors, so the entry point can tell them apart without loading the SDK.
export { MODEL_UNAVAILABLE_EXIT_CODE, ModelUnavailableError } from "./cli-error.js";

export interface ModelCheckOptions {
  apiKey: string;
  model: string;
  /** Default: the SDK's, `https://api.anthropic.com`. */
  baseURL?: string;
  /** Default 15 s. */
  timeoutMs?: number;
  /** Stops the check (it then resolves): the command failed for another reason meanwhile. */
  signal?: AbortSignal;
}

/**
 * Checks the model endpoint and key with one `count_tokens` request (free of charge, no model
 * run) and no retries, so a wrong key or URL ends a run before anything is written. Throws
 * {@link ModelUnavailableError} for 401/403 and for an unreachable endpoint; any other answer
 * (a proxy without `count_tokens`, an overload) is not conclusive and lets the run start, where
 * the model's own retries apply.
 *
 * @example
 * await checkModelEndpoint({ apiKey: process.env.ANTHROPIC_API_KEY!, model: "claude-sonnet-5-5" });
 */
export async function checkModelEndpoint(options: ModelCheckOptions): Promise<void> {
  // Loaded here, not on import: the model adapter starts loading the SDK when the model is made,
  // so the load overlaps opening the repository instead of preceding the command's start.
  const { default: Anthropic } = await import("@anthropic-ai/sdk");
  const client = new Anthropic({
    apiKey: options.apiKey,
    baseURL: options.baseURL ?? null,
    maxRetries: 0,
    timeout: options.timeoutMs ?? 15_000,
  });
  const url = client.baseURL;
  try {
    await client.messages.countTokens({ model: options.model, messages: [{ role: "user", content: "ping" }] }, options.signal ? { signal: options.signal } : {});
  } catch (error) {
    if (options.signal?.aborted) return;
    if (error instanceof Anthropic.AuthenticationError || error instanceof Anthropic.PermissionDeniedError) {
      const detail = (error.error as { error?: { message?: string } } | undefined)?.error?.message ?? error.message;
      throw new ModelUnavailableError(`the model endpoint ${url} refused the API key (${error.status}: ${detail})`, url);
    }
    if (error instanceof Anthropic.APIConnectionError) {
      const reason = error instanceof Anthropic.APIConnectionTimeoutError ? "timed out" : connectionReason(error);
      throw new ModelUnavailableError(`cannot reach the model endpoint ${url} (${reason})`, url);
    }
    // Anything else: the endpoint answered, so it is reachable and the key was not refused.
  }
}

/** The most specific reason in an error's cause chain: `ECONNREFUSED`, `ENOTFOUND`, … */
function connectionReason(error: unknown): string {
  let message: string | undefined;
  for (let current = error as { code?: unknown; message?: string; cause?: unknown } | undefined, depth = 0; current && depth < 5; current = current.cause as typeof current, depth++) {
    if (typeof current.code === "string" && /^E[A-Z]+$/.test(current.code)) return current.code;
    message = current.message ?? message;
  }
  return message ?? "connection failed";
}
