/**
 * Progress of a long bundle operation, handed to the caller's `onProgress` as plain numbers (bytes
 * done, of a total when known). Drawing it is the caller's business (the CLI: cli/progress.ts); with
 * no callback every call is a no-op.
 */
interface ProgressEvent {
  /** What is being done: 'export', 'import', 'verify', or a sync phase. */
  phase: string;
  done: number;
  /** Null when the total is not known (a bundle read from a stream). */
  total: number | null;
}

export type ProgressCallback = (p: ProgressEvent) => void;

export class Progress {
  private done = 0;

  constructor(
    private readonly phase: string,
    private readonly total: number | null,
    private readonly fn: ProgressCallback | undefined,
  ) {}

  add(bytes: number): void {
    this.set(this.done + bytes);
  }

  set(bytes: number): void {
    this.done = bytes;
    this.fn?.({ phase: this.phase, done: bytes, total: this.total });
  }
}
