/**
 * What the routes share: the open library, the authenticator, the task and event services, the clock,
 * and the states of snapshots that tasks are working on (Creating, Reverting, Deleting), which the
 * records on disk show only for the instant of a commit.
 */
import type { Clonebox, SnapshotView } from '../index.js';
import type { Authenticator, Principal } from './auth.js';
import type { EventBus } from './events.js';
import type { LoginThrottle } from './limits.js';
import type { TaskService } from './tasks.js';

type TransientState = 'Creating' | 'Reverting' | 'Deleting';

export interface PendingSnapshot {
  state: TransientState;
  /** For a snapshot being created (no record yet): what the member shows meanwhile. */
  created?: { description: string | null; tags: string[]; time: string; type: 'disk' | 'full' };
}

export interface ServiceOptions {
  /** Milliseconds since the epoch (tests pass a clock to expire sessions without waiting). */
  now?: () => number;
  /** Free bytes on the filesystem holding `dir` (default: statfs). */
  freeBytes?: (dir: string) => Promise<number>;
}

export interface Listing {
  stamp: string | null;
  list: SnapshotView[];
  bodies: Map<string, { text: string; etag: string | null }>;
}

export interface Service {
  cb: Clonebox;
  auth: Authenticator;
  tasks: TaskService;
  bus: EventBus;
  throttle: LoginThrottle;
  now: () => number;
  freeBytes: (dir: string) => Promise<number>;
  /**
   * Each VM's snapshot list as last read, with the records' stamp it was read at (cb.snapshots.stamp),
   * and the reply bodies made from it ('' for the collection, else the snapshot's name).
   */
  lists: Map<string, Listing>;
  /** `${vm}/${snapshot}` → what a task is doing to it. */
  pending: Map<string, PendingSnapshot>;
  /** Reads the home's event log into the bus (called by the tail's watcher and before a task completes). */
  syncHome: () => Promise<void>;
  /** Resolves when the service stops (SSE streams end then). */
  stopping: AbortSignal;
  uuid: string;
}

export type Env = { Variables: { principal: Principal; service: Service } };

export function pendingKey(vm: string, snapshot: string): string {
  return `${vm}/${snapshot}`;
}
