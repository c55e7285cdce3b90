/**
 * The task service: every create, revert and delete runs as a Redfish Task (Task.v1_7_3). The request
 * gets 202 with `Location: <task monitor>` and nothing else; the monitor answers 202 with the Task while
 * it runs and then the operation's own response. Tasks of one system run one after the other (a queue
 * per system), so two requests never race for the VM's lock.
 */
import { randomBytes } from 'node:crypto';
import { CloneboxError } from '../index.js';
import { errorBody, fromLibraryError } from './errors.js';
import type { EventBus } from './events.js';
import { MAX_FINISHED_TASKS } from './limits.js';
import { type Message, taskMessage } from './messages.js';
import { monitorUri, taskUri } from './uris.js';

export interface FinalResponse {
  status: number;
  body: unknown;
  headers: Record<string, string>;
}

type TaskState = 'New' | 'Running' | 'Completed' | 'Exception' | 'Cancelled';

export interface TaskContext {
  readonly id: string;
  readonly signal: AbortSignal;
  message(m: Message): void;
  progress(percent: number): void;
}

interface Task {
  id: string;
  name: string;
  state: TaskState;
  percent: number;
  messages: Message[];
  start: number;
  end: number | null;
  payload: { HttpOperation: string; TargetUri: string; JsonBody: string };
  final: FinalResponse | null;
  abort: AbortController;
  /** A client asked to cancel it (DELETE of the task or its monitor). */
  cancelRequested: boolean;
  done: Promise<void>;
}

/** What a cancel request found or achieved (routes/tasks.ts maps it onto a status). */
export type CancelOutcome = 'unknown' | 'ended' | 'cancelled' | 'completed' | 'pending';

export interface TaskSpec {
  name: string;
  method: string;
  target: string;
  body: unknown;
  /** Tasks with the same queue key run in order. */
  queue: string;
  /** The system and snapshot the task is about (for error messages). */
  ctx: { vm: string; snapshot?: string };
  /** Undoes what the route set up for the task (its transient snapshot state) when the task never runs. */
  release?: () => void;
}

export class TaskService {
  private readonly tasks = new Map<string, Task>();
  private readonly queues = new Map<string, Promise<void>>();
  private closing = false;

  constructor(
    private readonly bus: EventBus,
    private readonly now: () => number,
    /**
     * Reads the home's event log into the bus: called before a task's start and completion are told, so
     * that changes made meanwhile by others, and the task's own, come in the order they happened.
     */
    private readonly syncHome: () => Promise<void>,
  ) {}

  start(spec: TaskSpec, fn: (t: TaskContext) => Promise<FinalResponse>): string {
    const id = randomBytes(8).toString('hex');
    const task: Task = {
      id,
      name: spec.name,
      state: 'New',
      percent: 0,
      messages: [],
      start: this.now(),
      end: null,
      payload: { HttpOperation: spec.method, TargetUri: spec.target, JsonBody: JSON.stringify(spec.body ?? {}) },
      final: null,
      abort: new AbortController(),
      cancelRequested: false,
      done: Promise.resolve(),
    };
    this.tasks.set(id, task);
    this.prune();
    const prev = this.queues.get(spec.queue) ?? Promise.resolve();
    task.done = prev.then(() => this.runOne(task, spec, fn));
    this.queues.set(spec.queue, task.done);
    void task.done.finally(() => {
      if (this.queues.get(spec.queue) === task.done) this.queues.delete(spec.queue);
    });
    return id;
  }

  private async runOne(task: Task, spec: TaskSpec, fn: (t: TaskContext) => Promise<FinalResponse>): Promise<void> {
    const origin = taskUri(task.id);
    if (task.abort.signal.aborted) {
      spec.release?.();
      if (task.cancelRequested) this.cancelled(task);
      else this.finish(task, 'Cancelled', fromLibraryError(task.abort.signal.reason, spec.ctx));
      this.bus.publish([{ message: taskMessage('TaskCancelled', [task.id]), origin }]);
      return;
    }
    await this.syncHome().catch(() => undefined);
    task.state = 'Running';
    this.bus.publish([{ message: taskMessage('TaskStarted', [task.id]), origin }]);
    const ctx: TaskContext = {
      id: task.id,
      signal: task.abort.signal,
      message: (m) => {
        task.messages.push(m);
      },
      progress: (p) => {
        const percent = Math.max(0, Math.min(100, Math.round(p)));
        if (percent === task.percent) return;
        task.percent = percent;
        this.bus.publish([{ message: taskMessage('TaskProgressChanged', [task.id, percent]), origin }]);
      },
    };
    let final: FinalResponse;
    let ok = true;
    try {
      final = await fn(ctx);
    } catch (err) {
      if (task.cancelRequested && err instanceof CloneboxError && err.code === 'ABORTED') {
        // Stopped where the library leaves nothing behind: the snapshots are as they were.
        await this.syncHome().catch(() => undefined);
        this.cancelled(task);
        this.bus.publish([{ message: taskMessage('TaskCancelled', [task.id]), origin }]);
        return;
      }
      ok = false;
      const e = fromLibraryError(err, spec.ctx);
      task.messages.push(...e.messages);
      final = { status: e.status, body: errorBody(e.messages), headers: e.headers };
    }
    await this.syncHome().catch(() => undefined);
    task.final = final;
    task.end = this.now();
    task.percent = ok ? 100 : task.percent;
    task.state = ok ? 'Completed' : 'Exception';
    const warned = task.messages.some((m) => m.MessageSeverity !== 'OK');
    const id = !ok ? 'TaskAborted' : warned ? 'TaskCompletedWarning' : 'TaskCompletedOK';
    this.bus.publish([{ message: taskMessage(id, [task.id]), origin }]);
  }

  /** A task a client cancelled: its monitor then answers 409 with the TaskCancelled message. */
  private cancelled(task: Task): void {
    const m = taskMessage('TaskCancelled', [task.id]);
    task.messages.push(m);
    task.final = { status: 409, body: errorBody([m]), headers: {} };
    task.state = 'Cancelled';
    task.end = this.now();
  }

  /**
   * Cancels a task that has not ended: its signal aborts, and a create or revert stops where that
   * leaves nothing behind (waiting for the VM lock, or before its journal commits). Waits up to
   * `waitMs` for the outcome: cancelled, or completed when the operation was past its last such point.
   */
  async cancel(id: string, waitMs: number): Promise<CancelOutcome> {
    const t = this.tasks.get(id);
    if (!t) return 'unknown';
    if (t.final !== null) return 'ended';
    t.cancelRequested = true;
    t.abort.abort(CloneboxError.ABORTED(`task ${id} was cancelled`));
    let timer: NodeJS.Timeout | undefined;
    const settled = await Promise.race([
      t.done.then(() => true),
      new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), waitMs);
      }),
    ]);
    clearTimeout(timer);
    if (!settled) return 'pending';
    return t.state === 'Cancelled' ? 'cancelled' : 'completed';
  }

  /** The state of a task (null when unknown). */
  state(id: string): TaskState | null {
    return this.tasks.get(id)?.state ?? null;
  }

  private finish(task: Task, state: TaskState, e: ReturnType<typeof fromLibraryError>): void {
    task.messages.push(...e.messages);
    task.final = { status: e.status, body: errorBody(e.messages), headers: e.headers };
    task.state = state;
    task.end = this.now();
  }

  private prune(): void {
    const finished = [...this.tasks.values()].filter((t) => t.final !== null);
    for (const t of finished.slice(0, Math.max(0, finished.length - MAX_FINISHED_TASKS))) this.tasks.delete(t.id);
  }

  has(id: string): boolean {
    return this.tasks.has(id);
  }

  /** The operation's response once the task finished, else null (the monitor then answers 202 and the Task). */
  final(id: string): FinalResponse | null {
    return this.tasks.get(id)?.final ?? null;
  }

  view(id: string): Record<string, unknown> | null {
    const t = this.tasks.get(id);
    if (!t) return null;
    const critical = t.messages.some((m) => m.MessageSeverity === 'Critical');
    const warning = t.messages.some((m) => m.MessageSeverity === 'Warning');
    return {
      '@odata.type': '#Task.v1_7_3.Task',
      '@odata.id': taskUri(t.id),
      Id: t.id,
      Name: t.name,
      TaskState: t.state,
      TaskStatus: critical || t.state === 'Exception' ? 'Critical' : warning ? 'Warning' : 'OK',
      PercentComplete: t.percent,
      StartTime: new Date(t.start).toISOString(),
      ...(t.end !== null ? { EndTime: new Date(t.end).toISOString() } : {}),
      TaskMonitor: monitorUri(t.id),
      Payload: { ...t.payload, HttpHeaders: [] },
      Messages: t.messages,
    };
  }

  ids(): string[] {
    return [...this.tasks.keys()];
  }

  running(): boolean {
    return [...this.tasks.values()].some((t) => t.final === null);
  }

  /** Stops taking tasks: the queued ones are cancelled, the running ones finish. Resolves when all are done. */
  async shutdown(): Promise<void> {
    this.closing = true;
    for (const t of this.tasks.values()) if (t.state === 'New') t.abort.abort(CloneboxError.ABORTED('the service is shutting down'));
    await Promise.allSettled([...this.tasks.values()].map((t) => t.done));
  }

  get isClosing(): boolean {
    return this.closing;
  }
}
