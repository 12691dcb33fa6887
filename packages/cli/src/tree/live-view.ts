import { renderTree } from "./tree-view.js";
import type { TreeState } from "./tree-state.js";

export interface LiveTreeViewOptions {
  /** Writes to the terminal. */
  write: (text: string) => void;
  /** Current terminal width, read before every redraw so a resize takes effect. */
  columns: () => number;
  /** Fewest milliseconds between two redraws. Default 100 (10 per second). */
  intervalMs?: number;
  color?: boolean;
  now?: () => number;
}

const HIDE_CURSOR = "\x1b[?25l";
const SHOW_CURSOR = "\x1b[?25h";
const CLEAR_BELOW = "\x1b[J";

/**
 * Redraws the agent tree in place on a terminal: the cursor moves back to the first line of
 * the previous frame and the new frame overwrites it. Updates are coalesced so a burst of
 * events costs one redraw per interval; `finish` draws the final state once and leaves it.
 *
 * @example
 * const view = new LiveTreeView({ write: (s) => process.stdout.write(s), columns: () => process.stdout.columns });
 * for await (const event of run) view.update((tree = reduceTree(tree, event)));
 * view.finish(tree);
 */
export class LiveTreeView {
  private readonly intervalMs: number;
  private readonly now: () => number;
  private linesOnScreen = 0;
  private lastDraw = Number.NEGATIVE_INFINITY;
  private pending: TreeState | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly startedAt: number;
  private finished = false;

  constructor(private readonly options: LiveTreeViewOptions) {
    this.intervalMs = options.intervalMs ?? 100;
    this.now = options.now ?? Date.now;
    this.startedAt = this.now();
  }

  /** Number of frames written so far (for tests and diagnostics). */
  frames = 0;

  update(state: TreeState): void {
    if (this.finished) return;
    this.pending = state;
    const wait = this.lastDraw + this.intervalMs - this.now();
    if (wait <= 0) {
      this.flush();
    } else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.flush();
      }, wait);
      this.timer.unref();
    }
  }

  /** Draws the final state and gives the cursor back; later updates are ignored. */
  finish(state: TreeState): void {
    if (this.finished) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.pending = state;
    this.flush();
    this.finished = true;
    this.options.write(SHOW_CURSOR);
  }

  /** Gives the cursor back without drawing (on an abrupt exit). */
  release(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.finished = true;
    this.options.write(SHOW_CURSOR);
  }

  private flush(): void {
    const state = this.pending;
    if (!state || this.finished) return;
    this.pending = undefined;
    this.lastDraw = this.now();
    // One column short of the edge: a line that exactly fills it would wrap on some terminals.
    const width = Math.max(20, (this.options.columns() || 80) - 1);
    const frame = renderTree(state, { width, color: this.options.color ?? true, elapsedMs: this.now() - this.startedAt });
    const lines = frame.split("\n");
    const up = this.linesOnScreen > 0 ? `\r\x1b[${this.linesOnScreen}A` : "";
    const body = lines.map((line) => `\x1b[2K${line}`).join("\n");
    this.options.write(`${this.frames === 0 ? HIDE_CURSOR : ""}${up}${body}\n${CLEAR_BELOW}`);
    this.linesOnScreen = lines.length;
    this.frames += 1;
  }
}
