/**
 * Redfish Message objects (DSP0266 "Message object") from the registries the service speaks: DMTF's
 * Base, TaskEvent and ResourceEvent registries, and the OEM registry HawkFish for the snapshot messages.
 * A message carries `MessageSeverity` and also the older `Severity` that some clients still read.
 */

type Severity = 'OK' | 'Warning' | 'Critical';

interface Spec {
  readonly message: string;
  readonly severity: Severity;
  readonly resolution: string;
}

const BASE_PREFIX = 'Base.1.16.0';
const BASE = {
  Success: { message: 'The request completed successfully.', severity: 'OK', resolution: 'None.' },
  Created: { message: 'The resource was created successfully.', severity: 'OK', resolution: 'None.' },
  GeneralError: {
    message: 'A general error has occurred.  See Resolution for information on how to resolve the error.',
    severity: 'Critical',
    resolution: 'None.',
  },
  InternalError: {
    message: 'The request failed due to an internal service error.  The service is still operational.',
    severity: 'Critical',
    resolution: 'Resubmit the request.  If the problem persists, consider resetting the service.',
  },
  ResourceNotFound: {
    message: "The requested resource of type %1 named '%2' was not found.",
    severity: 'Critical',
    resolution: 'Provide a valid resource identifier and resubmit the request.',
  },
  ResourceMissingAtURI: {
    message: "The resource at the URI '%1' was not found.",
    severity: 'Critical',
    resolution: 'Place a valid resource at the URI or correct the URI and resubmit the request.',
  },
  ResourceAlreadyExists: {
    message: "The requested resource of type %1 with the property %2 with the value '%3' already exists.",
    severity: 'Critical',
    resolution: 'Do not repeat the create operation as the resource has already been created.',
  },
  ResourceInUse: {
    message: 'The change to the requested resource failed because the resource is in use or in transition.',
    severity: 'Warning',
    resolution: 'Remove the condition and resubmit the request if the operation failed.',
  },
  InsufficientStorage: {
    message: 'Insufficient storage or memory available to complete the request.',
    severity: 'Critical',
    resolution: 'Increase the free storage space or memory and resubmit the request.',
  },
  MalformedJSON: {
    message: 'The request body submitted was malformed JSON and could not be parsed by the receiving service.',
    severity: 'Critical',
    resolution: 'Ensure that the request body is valid JSON and resubmit the request.',
  },
  PropertyValueTypeError: {
    message: "The value '%1' for the property %2 is not a type that the property can accept.",
    severity: 'Warning',
    resolution: 'Correct the value for the property in the request body and resubmit the request if the operation failed.',
  },
  PropertyValueFormatError: {
    message: "The value '%1' for the property %2 is not a format that the property can accept.",
    severity: 'Warning',
    resolution: 'Correct the value for the property in the request body and resubmit the request if the operation failed.',
  },
  PropertyValueOutOfRange: {
    message: "The value '%1' for the property %2 is not in the supported range of acceptable values.",
    severity: 'Warning',
    resolution: 'Correct the value for the property in the request body and resubmit the request if the operation failed.',
  },
  PropertyUnknown: {
    message: 'The property %1 is not in the list of valid properties for the resource.',
    severity: 'Warning',
    resolution: 'Remove the unknown property from the request body and resubmit the request if the operation failed.',
  },
  PropertyMissing: {
    message: 'The property %1 is a required property and must be included in the request.',
    severity: 'Warning',
    resolution: 'Ensure that the property is in the request body and has a valid value and resubmit the request if the operation failed.',
  },
  ActionParameterUnknown: {
    message: 'The action %1 was submitted with the invalid parameter %2.',
    severity: 'Warning',
    resolution: 'Correct the invalid parameter and resubmit the request if the operation failed.',
  },
  QueryParameterValueFormatError: {
    message: "The value '%1' for the parameter %2 is not a format that the parameter can accept.",
    severity: 'Warning',
    resolution: 'Correct the value for the query parameter in the request and resubmit the request if the operation failed.',
  },
  OperationNotAllowed: {
    message: 'The HTTP method is not allowed on this resource.',
    severity: 'Critical',
    resolution: 'None.',
  },
  HeaderInvalid: {
    message: "The header '%1' is invalid.",
    severity: 'Critical',
    resolution: 'Resubmit the request with a valid request header.',
  },
  PreconditionFailed: {
    message: 'The ETag supplied did not match the ETag required to change this resource.',
    severity: 'Critical',
    resolution: 'Try the operation again using the appropriate ETag.',
  },
  NoValidSession: {
    message: 'There is no valid session established with the implementation.',
    severity: 'Critical',
    resolution: 'Establish a session before attempting any operations.',
  },
  InsufficientPrivilege: {
    message: 'There are insufficient privileges for the account or credentials associated with the current session to perform the requested operation.',
    severity: 'Critical',
    resolution: 'Either abandon the operation or change the associated access rights and resubmit the request if the operation failed.',
  },
  ServiceTemporarilyUnavailable: {
    message: 'The service is temporarily unavailable.  Retry in %1 seconds.',
    severity: 'Critical',
    resolution: 'Wait for the indicated retry duration and retry the operation.',
  },
  ServiceShuttingDown: {
    message: 'The operation failed because the service is shutting down and can no longer take incoming requests.',
    severity: 'Critical',
    resolution: 'When the service becomes available, resubmit the request if the operation failed.',
  },
} as const satisfies Record<string, Spec>;

const TASK_PREFIX = 'TaskEvent.1.0.3';
const TASK = {
  TaskStarted: { message: "The task with Id '%1' has started.", severity: 'OK', resolution: 'None.' },
  TaskProgressChanged: { message: "The task with Id '%1' has changed to progress %2 percent complete.", severity: 'OK', resolution: 'None.' },
  TaskCompletedOK: { message: "The task with Id '%1' has completed.", severity: 'OK', resolution: 'None.' },
  TaskCompletedWarning: { message: "The task with Id '%1' has completed with warnings.", severity: 'Warning', resolution: 'None.' },
  TaskAborted: { message: "The task with Id '%1' has been aborted.", severity: 'Critical', resolution: 'None.' },
  TaskCancelled: { message: "The task with Id '%1' has been cancelled.", severity: 'Warning', resolution: 'None.' },
} as const satisfies Record<string, Spec>;

const RESOURCE_PREFIX = 'ResourceEvent.1.3.0';
const RESOURCE = {
  ResourceCreated: { message: 'The resource has been created successfully.', severity: 'OK', resolution: 'None.' },
  ResourceRemoved: { message: 'The resource has been removed successfully.', severity: 'OK', resolution: 'None.' },
  ResourceChanged: { message: 'One or more resource properties have changed.', severity: 'OK', resolution: 'None.' },
} as const satisfies Record<string, Spec>;

/** The OEM registry of the snapshot service (docs/serve.md lists it). */
const OEM_PREFIX = 'HawkFish.1.0.0';
const OEM = {
  SnapshotReverted: { message: "System '%1' was reverted to snapshot '%2'.", severity: 'OK', resolution: 'None.' },
  QuiesceUnavailable: {
    message: "Snapshot '%1' was taken without quiescing the guest: %2",
    severity: 'Warning',
    resolution: 'Install and start the QEMU guest agent in the guest for application-consistent snapshots.',
  },
  StorageEstimate: {
    message: "Snapshot '%1' of system '%2' needs an estimated %3 bytes; %4 bytes are free where its disks live.",
    severity: 'OK',
    resolution: 'None.',
  },
  MemoryEstimate: {
    message: "Snapshot '%1' of system '%2' saves the guest's memory: %3 bytes, counted in the storage estimate.",
    severity: 'OK',
    resolution: 'None.',
  },
  PrunedByLimit: {
    message: "Snapshots %1 of system '%2' were removed by its retention policy (limit %3).",
    severity: 'Warning',
    resolution: 'Raise the system snapshot limit (Oem.HawkFish.SnapshotLimit) to keep more snapshots.',
  },
  OperationWarning: { message: '%1', severity: 'Warning', resolution: 'None.' },
  TaskNotCancellable: {
    message: "Task '%1' has already ended (%2) and cannot be cancelled.",
    severity: 'Warning',
    resolution: "None: the task's monitor answers with the operation's outcome.",
  },
  // Base has no message for a body over the size limit (HTTP 413).
  RequestBodyTooLarge: {
    message: 'The request body is larger than the %1 bytes the service accepts.',
    severity: 'Critical',
    resolution: 'Send a smaller request body.',
  },
} as const satisfies Record<string, Spec>;

export type BaseId = keyof typeof BASE;
export type TaskId = keyof typeof TASK;
export type ResourceId = keyof typeof RESOURCE;
export type OemId = keyof typeof OEM;

export interface Message {
  '@odata.type': '#Message.v1_1_2.Message';
  MessageId: string;
  Message: string;
  MessageArgs: string[];
  MessageSeverity: Severity;
  Severity: Severity;
  Resolution: string;
  RelatedProperties?: string[];
  /** The clonebox error code, when the message stands for one (the `remote` client maps it back). */
  Oem?: { HawkFish: { Code: string } };
}

function make(prefix: string, id: string, spec: Spec, args: readonly (string | number)[], extra: Partial<Message>): Message {
  const a = args.map(String);
  const text = spec.message.replace(/%(\d+)/g, (m, n: string) => a[Number(n) - 1] ?? m);
  return {
    '@odata.type': '#Message.v1_1_2.Message',
    MessageId: `${prefix}.${id}`,
    Message: text,
    MessageArgs: a,
    MessageSeverity: spec.severity,
    Severity: spec.severity,
    Resolution: spec.resolution,
    ...extra,
  };
}

export function baseMessage(id: BaseId, args: readonly (string | number)[] = [], extra: Partial<Message> = {}): Message {
  return make(BASE_PREFIX, id, BASE[id], args, extra);
}

export function taskMessage(id: TaskId, args: readonly (string | number)[]): Message {
  return make(TASK_PREFIX, id, TASK[id], args, {});
}

export function resourceMessage(id: ResourceId): Message {
  return make(RESOURCE_PREFIX, id, RESOURCE[id], [], {});
}

export function oemMessage(id: OemId, args: readonly (string | number)[] = [], extra: Partial<Message> = {}): Message {
  return make(OEM_PREFIX, id, OEM[id], args, extra);
}

/** The message for a warning of an operation: a quiesce that did not happen, else a plain warning. */
export function warningMessage(snapshot: string, warning: string): Message {
  return /quiesc|guest agent/i.test(warning) ? oemMessage('QuiesceUnavailable', [snapshot, warning]) : oemMessage('OperationWarning', [warning]);
}
