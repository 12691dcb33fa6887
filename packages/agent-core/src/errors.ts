/**
 * Every error keen raises on purpose is a `KeenError` with a stable `code`,
 * so callers can branch on `error.code` instead of parsing messages.
 *
 * @example
 * try { await workspace.readFile("../etc/passwd"); }
 * catch (error) { if (isKeenError(error, "path_outside_workspace")) console.log(error.message); }
 */
export class KeenError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "KeenError";
    this.code = code;
  }
}

/** A path given to a workspace resolves outside its root (`..`, absolute, or a symlink out). */
export class PathOutsideWorkspaceError extends KeenError {
  readonly path: string;
  constructor(path: string, reason: string) {
    super("path_outside_workspace", `Path "${path}" is outside the workspace: ${reason}`);
    this.name = "PathOutsideWorkspaceError";
    this.path = path;
  }
}

/** The operation was cancelled through an AbortSignal. */
export class AbortedError extends KeenError {
  constructor(message = "The operation was aborted") {
    super("aborted", message);
    this.name = "AbortedError";
  }
}

/** A model provider failed in a way retries could not fix (or that is not retryable). */
export class ModelError extends KeenError {
  readonly status: number | undefined;
  readonly retryable: boolean;
  constructor(message: string, options: { status?: number; retryable?: boolean; cause?: unknown; code?: string } = {}) {
    super(options.code ?? "model_error", message, { cause: options.cause });
    this.name = "ModelError";
    this.status = options.status;
    this.retryable = options.retryable ?? false;
  }
}

/**
 * The provider stayed unavailable (overloaded, rate limited, failing with 5xx or unreachable)
 * until the retry policy was spent. Nothing was wrong with the request: the work can resume
 * later, so a run ends `interrupted` rather than `error`. Code `model_unavailable`.
 */
export class ModelUnavailableError extends ModelError {
  constructor(message: string, options: { status?: number; cause?: unknown } = {}) {
    super(message, { ...options, retryable: true, code: "model_unavailable" });
    this.name = "ModelUnavailableError";
  }
}

/** Bad configuration passed to a keen factory or command. */
export class ConfigError extends KeenError {
  constructor(message: string) {
    super("config_error", message);
    this.name = "ConfigError";
  }
}

export function isKeenError(error: unknown, code?: string): error is KeenError {
  return error instanceof KeenError && (code === undefined || error.code === code);
}

/** Throws `AbortedError` when the signal has fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortedError(reasonText(signal.reason));
}

function reasonText(reason: unknown): string {
  if (reason instanceof Error) return reason.message;
  if (typeof reason === "string") return reason;
  return "The operation was aborted";
}
