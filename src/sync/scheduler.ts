/**
 * The pull scheduler of a sync run: teammates to pull from, each queued once, pulled one at a time.
 * The queue holds keys, not connections: the connection is looked up when its turn comes, since the
 * one that asked may have been replaced (Hyperswarm keeps one of two simultaneous connections).
 */
export class PullScheduler {
  private readonly queue: string[] = [];
  private readonly queued = new Set<string>();
  private pulling: Promise<void> | null = null;
  private stopped = false;

  /** `pull` pulls from the teammate with key hex `key` (if it is still connected). */
  constructor(private readonly pull: (key: string) => Promise<void>) {}

  /** Queues a pull from `key` unless one is queued already. */
  schedule(key: string): void {
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.queue.push(key);
    this.pump();
  }

  /** A pull runs or waits. */
  get busy(): boolean {
    return this.pulling !== null || this.queue.length > 0;
  }

  get stopping(): boolean {
    return this.stopped;
  }

  /** No new pull starts; the one running is asked to stop (it checks `stopping`). */
  stop(): void {
    this.stopped = true;
  }

  /** Resolves when no pull runs. */
  async idle(): Promise<void> {
    await this.pulling;
  }

  private pump(): void {
    if (this.pulling) return;
    this.pulling = (async () => {
      while (this.queue.length && !this.stopped) {
        const key = this.queue.shift()!;
        this.queued.delete(key);
        await this.pull(key);
      }
    })().finally(() => {
      this.pulling = null;
      if (this.queue.length && !this.stopped) this.pump();
    });
  }
}
