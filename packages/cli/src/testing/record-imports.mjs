// Preload (`node --import`) for process tests: appends the URL of every module the process
// resolves to the file named by KEEN_IMPORT_LOG, so a test can tell which packages a command loaded.
import { register } from "node:module";

if (process.env.KEEN_IMPORT_LOG) {
  register(
    `data:text/javascript,${encodeURIComponent(`
      import { appendFileSync } from "node:fs";
      const log = ${JSON.stringify(process.env.KEEN_IMPORT_LOG)};
      export async function resolve(specifier, context, next) {
        const result = await next(specifier, context);
        appendFileSync(log, result.url + "\\n");
        return result;
      }
    `)}`,
  );
}
