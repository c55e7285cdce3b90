/**
 * A progress line on stderr for long exports and imports: bytes done (of total when known), rate and
 * ETA, redrawn at most five times a second. Only when stderr is a terminal and the output is not JSON;
 * otherwise every call is a no-op.
 */
import { formatBytes } from '../names.js';

export class Progress {
  private readonly start = Date.now();
  private last = 0;
  private shown = false;
  private done = 0;

  constructor(private readonly label: string, private readonly total: number | null, private readonly enabled: boolean) {}

  static for(label: string, total: number | null, json: boolean): Progress {
    return new Progress(label, total, !json && Boolean(process.stderr.isTTY));
  }

  add(bytes: number): void {
    this.set(this.done + bytes);
  }

  set(bytes: number): void {
    this.done = bytes;
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.last < 200) return;
    this.last = now;
    this.draw(now);
  }

  private draw(now: number): void {
    const secs = Math.max((now - this.start) / 1000, 0.001);
    const rate = this.done / secs;
    let text = `${this.label} ${formatBytes(this.done)}`;
    if (this.total !== null && this.total > 0) {
      const pct = Math.min(100, (100 * this.done) / this.total);
      text += ` / ${formatBytes(this.total)} ${pct.toFixed(0)}%`;
      if (rate > 0 && this.done < this.total) text += `  ETA ${clock((this.total - this.done) / rate)}`;
    }
    text += `  ${formatBytes(rate)}/s`;
    const cols = process.stderr.columns ?? 0;
    const width = cols >= 20 ? cols : 80;
    process.stderr.write(`\r${text.slice(0, width - 1).padEnd(Math.min(width - 1, this.shownWidth))}`);
    this.shownWidth = Math.max(this.shownWidth, Math.min(width - 1, text.length));
    this.shown = true;
  }

  private shownWidth = 0;

  /** Clears the line (call before printing anything else, and at the end). */
  finish(): void {
    if (this.enabled && this.shown) process.stderr.write(`\r${' '.repeat(this.shownWidth)}\r`);
    this.shown = false;
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
