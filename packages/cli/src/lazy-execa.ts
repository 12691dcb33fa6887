/**
 * execa, loaded on first use. `keen run` starts without it (execa and its dependencies are about
 * 230 kB of bundle to read and evaluate): agent-core runs the run's git calls through its own
 * launcher, and the few git calls the CLI makes itself (a named `--base` or `--branch`, the diff
 * after a run, `--apply`) load execa when they happen.
 */
export async function loadExeca(): Promise<typeof import("execa").execa> {
  return (await import("execa")).execa;
}
