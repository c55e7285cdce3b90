/** The service's resource URIs, in one place (ids are names matching NAME_RE, so they need no escaping). */

export const ROOT = '/redfish/v1';
export const SYSTEMS = `${ROOT}/Systems`;
export const SESSIONS = `${ROOT}/SessionService/Sessions`;
export const TASKS = `${ROOT}/TaskService/Tasks`;
export const TASK_MONITORS = `${ROOT}/TaskService/TaskMonitors`;
export const EVENT_SERVICE = `${ROOT}/EventService`;
export const SSE = `${EVENT_SERVICE}/SSE`;
export const ACCOUNTS = `${ROOT}/AccountService/Accounts`;

export function systemUri(vm: string): string {
  return `${SYSTEMS}/${vm}`;
}

export function snapshotsUri(vm: string): string {
  return `${SYSTEMS}/${vm}/Oem/HawkFish/Snapshots`;
}

export function snapshotUri(vm: string, name: string): string {
  return `${snapshotsUri(vm)}/${name}`;
}

export function taskUri(id: string): string {
  return `${TASKS}/${id}`;
}

export function monitorUri(id: string): string {
  return `${TASK_MONITORS}/${id}`;
}
