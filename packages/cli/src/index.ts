export { main } from "./main.js";
export { UsageError, type Io } from "./cli-error.js";
export { describeEvent, formatUsage } from "./render.js";
