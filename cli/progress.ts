/**
 * The progress line of long commands on stderr: bytes done (of total when known), percent, ETA and
 * rate, redrawn at most four times a second and cleared at the end. Fed by the library's onProgress;
 * only made when stderr is a terminal and the output is not JSON (progressFor returns null otherwise).
 * One line can show successive steps (a sync's chains and phases): the rate and ETA restart with each.
 */
import { formatBytes, type ProgressEvent } from '../src/index.js';
import { verbosity } from './output.js';

/** Four redraws a second: fast enough to look live, slow enough to cost nothing. */
const REDRAW_MS = 250;

export class ProgressLine {
  private start = Date.now();
  private last = 0;
  private shown = false;
  private shownWidth = 0;

  constructor(private label: string) {}

  /** For onProgress. */
  readonly update = (p: ProgressEvent): void => {
    this.show(this.label, p.done, p.total);
  };

  /** Draws `label` with its progress; a new label restarts the rate. `force` draws even between redraws (a step's end). */
  show(label: string, done: number, total: number | null, opts: { force?: boolean; bytes?: boolean } = {}): void {
    const now = Date.now();
    if (label !== this.label) {
      this.label = label;
      this.start = now;
    } else if (!opts.force && now - this.last < REDRAW_MS) {
      return;
    }
    this.last = now;
    this.draw(now, done, total, opts.bytes ?? true);
  }

  private draw(now: number, done: number, total: number | null, bytes: boolean): void {
    const secs = Math.max((now - this.start) / 1000, 0.001);
    const rate = done / secs;
    const amount = (n: number) => (bytes ? formatBytes(n) : String(n));
    let text = `${this.label} ${amount(done)}`;
    if (total !== null && total > 0) {
      const pct = Math.min(100, (100 * done) / total);
      text += ` / ${amount(total)} ${pct.toFixed(0)}%`;
      if (rate > 0 && done < total) text += `  ETA ${clock((total - done) / rate)}`;
    }
    if (bytes) text += `  ${formatBytes(rate)}/s`;
    this.write(text);
  }

  /** A line without figures: what a step without measurable progress is doing, and for how long. */
  status(text: string): void {
    this.label = text;
    this.write(text);
  }

  private write(text: string): void {
    const cols = process.stderr.columns ?? 0;
    const width = cols >= 20 ? cols : 80;
    process.stderr.write(`\r${text.slice(0, width - 1).padEnd(Math.min(width - 1, this.shownWidth))}`);
    this.shownWidth = Math.max(this.shownWidth, Math.min(width - 1, text.length));
    this.shown = true;
  }

  /** Clears the line (before anything else is printed, and at the end). */
  finish(): void {
    if (this.shown) process.stderr.write(`\r${' '.repeat(this.shownWidth)}\r`);
    this.shown = false;
    this.shownWidth = 0;
  }
}

/** A progress line when stderr is a terminal and the output is not JSON (nor --quiet), else null. */
export function progressFor(label: string, json: boolean): ProgressLine | null {
  return !json && !verbosity.quiet && process.stderr.isTTY ? new ProgressLine(label) : null;
}

/**
 * Runs `fn` with a status line (`label`, and the seconds it has taken) on a terminal: for steps the
 * library reports only as started and finished (merges, stats, diff).
 */
export async function withStatus<T>(label: string, json: boolean, fn: () => Promise<T>): Promise<T> {
  const line = progressFor(label, json);
  if (!line) return fn();
  const start = Date.now();
  // Shown only when the step takes a moment: a quick one leaves the terminal alone.
  const timer = setInterval(() => line.status(`${label} (${Math.round((Date.now() - start) / 1000)} s)`), 1000);
  try {
    return await fn();
  } finally {
    clearInterval(timer);
    line.finish();
  }
}

function clock(s: number): string {
  if (!Number.isFinite(s)) return '?';
  const t = Math.round(s);
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  const sec = t % 60;
  return h ? `${h}:${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}` : `${m}:${String(sec).padStart(2, '0')}`;
}
