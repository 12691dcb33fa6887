// What a session shows to a person (the live tree, one line per event, the closing summary's
// figures), loaded only for those modes: `--json` prints events as they are and needs none of it,
// nor the Unicode width tables behind it.
export { describeEvent } from "./render.js";
export { LiveTreeView } from "./tree/live-view.js";
export { formatTokens } from "./tree/tree-view.js";
