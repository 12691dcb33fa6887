export { main } from "./main.js";
export { UsageError, type Io } from "./cli-error.js";
export { describeEvent, formatUsage } from "./render.js";
export {
  reduceTree,
  emptyTree,
  treeFromSnapshot,
  agentsInOrder,
  displayStatus,
  type TreeState,
  type AgentNode,
  type AgentDisplayStatus,
} from "./tree/tree-state.js";
export { renderTree, formatTokens, visibleWidth, type RenderTreeOptions } from "./tree/tree-view.js";
export { LiveTreeView, type LiveTreeViewOptions } from "./tree/live-view.js";
export { scriptedTreePolicy, type ScriptedTask, type ScriptedTreeOptions, type ClosingTool } from "./demo/scripted-tree.js";
