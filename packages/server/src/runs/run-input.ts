import * as z from "zod";

/** A git ref a client may name: no option-like or path-climbing spellings. */
const Ref = z
  .string()
  .min(1)
  .max(200)
  .regex(/^(?!-)(?!.*\.\.)(?!.*\/\/)[A-Za-z0-9._\/-]+$/, "must be a branch, tag or commit name");

/** A remote repository: http(s) only, no credentials in the URL (they would be stored and shown). */
const RemoteRepo = z
  .object({
    url: z
      .url({ protocol: /^https?$/, error: "must be an http(s) URL" })
      .max(2000)
      .refine((u) => {
        const parsed = new URL(u);
        return parsed.username === "" && parsed.password === "";
      }, "must not carry credentials"),
    ref: Ref.optional(),
  })
  .strict();

/** A folder on the server's machine: admins and local mode only. */
const LocalRepo = z
  .object({ path: z.string().min(1).max(4096).refine((p) => !p.includes("\0") && p.startsWith("/"), "must be an absolute path") })
  .strict();

/** A repository sent earlier to `POST /v1/uploads`. */
const UploadedRepo = z.object({ uploadId: z.string().regex(/^upl_[0-9a-f-]{36}$/, "must be an upload id") }).strict();

export const RepoInput = z.union([RemoteRepo, LocalRepo, UploadedRepo]);
export type RepoInput = z.infer<typeof RepoInput>;

export const RunOptionsInput = z
  .object({
    maxDepth: z.number().int().min(0).max(4).optional(),
    maxChildren: z.number().int().min(1).max(8).optional(),
    model: z.string().regex(/^[a-z0-9][a-z0-9.:-]{0,99}$/, "must be a model id").optional(),
    /** Command run after merges and at completion; a non-zero exit fails validation. */
    validate: z.string().min(1).max(2000).optional(),
    onConflict: z.enum(["resolve", "rollback"]).optional(),
  })
  .strict();
export type RunOptionsInput = z.infer<typeof RunOptionsInput>;

export const CreateRunBody = z
  .object({
    vision: z.string().trim().min(1).max(20_000),
    repo: RepoInput,
    options: RunOptionsInput.default({}),
  })
  .strict();
export type CreateRunBody = z.infer<typeof CreateRunBody>;

export const ListRunsQuery = z
  .object({
    limit: z.coerce.number().int().min(1).max(100).default(20),
    cursor: z.string().max(200).optional(),
  })
  .strict();

export const RunIdParams = z.object({ id: z.string().regex(/^run_[0-9a-f-]{36}$/, "must be a run id") });

export const EventsQuery = z
  .object({ after: z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional() })
  .strict();
