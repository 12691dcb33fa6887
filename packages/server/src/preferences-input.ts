import * as z from "zod";

/** `PUT /v1/me/preferences`: whether deleting a run keeps its workspace on disk. */
export const PreferencesBody = z.object({ keepWorkspaces: z.boolean() }).strict();
export type PreferencesBody = z.infer<typeof PreferencesBody>;
