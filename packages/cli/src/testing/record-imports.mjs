// Preload (`node --import`) for process tests: appends the URL of every module the process
// resolves to the file named by KEEN_IMPORT_LOG, so a test can tell which packages a command loaded.
// ES modules are seen by a resolve hook; CommonJS `require` calls (createRequire, a CommonJS
// package's own dependencies) by wrapping the CommonJS resolver.
import { appendFileSync } from "node:fs";
import Module, { register } from "node:module";
import { pathToFileURL } from "node:url";

if (process.env.KEEN_IMPORT_LOG) {
  const log = process.env.KEEN_IMPORT_LOG;
  register(
    `data:text/javascript,${encodeURIComponent(`
      import { appendFileSync } from "node:fs";
      const log = ${JSON.stringify(log)};
      export async function resolve(specifier, context, next) {
        const result = await next(specifier, context);
        appendFileSync(log, result.url + "\\n");
        return result;
      }
    `)}`,
  );
  const resolveFilename = Module._resolveFilename;
  Module._resolveFilename = function (...args) {
    const filename = resolveFilename.apply(this, args);
    if (filename.startsWith("/")) appendFileSync(log, pathToFileURL(filename).href + "\n");
    return filename;
  };
}
