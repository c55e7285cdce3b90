/**
 * The progress line of long commands on stderr: bytes done (of total when known), percent, ETA and
 * rate, redrawn at most five times a second and cleared at the end. Fed by the library's onProgress;
 * only made when stderr is a terminal and the output is not JSON (progressFor returns null otherwise).
 */
import { formatBytes, type ProgressEvent } from '../src/index.js';

export class ProgressLine {
  private readonly start = Date.now();
  private last = 0;
  private shown = false;
  private shownWidth = 0;

  constructor(private readonly label: string) {}

  /** For onProgress. */
  readonly update = (p: ProgressEvent): void => {
    const now = Date.now();
    if (now - this.last < 200) return;
    this.last = now;
    this.draw(now, p.done, p.total);
  };

  private draw(now: number, done: number, total: number | null): void {
    const secs = Math.max((now - this.start) / 1000, 0.001);
    const rate = done / secs;
    let text = `${this.label} ${formatBytes(done)}`;
    if (total !== null && total > 0) {
      const pct = Math.min(100, (100 * done) / total);
      text += ` / ${formatBytes(total)} ${pct.toFixed(0)}%`;
      if (rate > 0 && done < total) text += `  ETA ${clock((total - done) / rate)}`;
    }
    text += `  ${formatBytes(rate)}/s`;
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
  }
}

/** A progress line when stderr is a terminal and the output is not JSON, else null. */
export function progressFor(label: string, json: boolean): ProgressLine | null {
  return !json && process.stderr.isTTY ? new ProgressLine(label) : null;
}

function clock(s: number): string {
  if (!Number.isFinite(s)) return '?';
  const t = Math.round(s);
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  const sec = t % 60;
  return h ? `${h}:${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}` : `${m}:${String(sec).padStart(2, '0')}`;
}
