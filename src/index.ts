/**
 * clonebox as a library: `import { Clonebox } from 'clonebox'`. See docs/api.md. Only light modules
 * are imported here: each method loads its implementation when it is called.
 */

export type { Bundles, Keys } from './api/bundles.js';
export { Clonebox } from './api/clonebox.js';
export type { Config } from './api/config.js';
export type { Demo } from './api/demo.js';
export type { Dht } from './api/dht.js';
export type { Events } from './api/events.js';
export type { Groups } from './api/groups.js';
export type { Images } from './api/images.js';
export type { Schedule } from './api/schedule.js';
export type { Snapshots } from './api/snapshots.js';
export type { Sync } from './api/sync.js';
export type { Teams } from './api/teams.js';
export type * from './api/types.js';
export type { Vms } from './api/vms.js';
export { CloneboxError, type ErrorCode } from './errors.js';
export { checkName, formatBytes, NAME_RE, parseSize } from './names.js';
/** The retention policy's keys (`snapshot policy --keep-last` is keep_last). */
export { POLICY_KEYS } from './snapshots/policy.js';
