/**
 * Redfish error responses: the envelope `{"error": {"code", "message", "@Message.ExtendedInfo": [...]}}`
 * (DSP0266 "Error responses"), the RedfishError a handler throws to send one, and the mapping of the
 * library's CloneboxError codes onto HTTP statuses and Base registry messages.
 */
import { CloneboxError } from '../index.js';
import { baseMessage, type Message } from './messages.js';

export interface ErrorBody {
  error: { code: string; message: string; '@Message.ExtendedInfo': Message[] };
}

export function errorBody(messages: readonly Message[]): ErrorBody {
  const first = messages[0] ?? baseMessage('GeneralError');
  return { error: { code: first.MessageId, message: first.Message, '@Message.ExtendedInfo': [...messages] } };
}

/** Thrown by handlers; the app turns it into the status, headers and envelope. */
export class RedfishError extends Error {
  constructor(
    readonly status: number,
    readonly messages: Message[],
    readonly headers: Record<string, string> = {},
  ) {
    super(messages[0]?.Message ?? `HTTP ${status}`);
  }
}

/** 404 ResourceNotFound; `code` is the library's code for it (the remote client maps it back). */
export function notFound(type: string, id: string, code?: 'VM_NOT_FOUND' | 'SNAPSHOT_NOT_FOUND'): RedfishError {
  return new RedfishError(404, [baseMessage('ResourceNotFound', [type, id], code ? { Oem: { HawkFish: { Code: code } } } : {})]);
}

export function badRequest(m: Message): RedfishError {
  return new RedfishError(400, [m]);
}

/** A Base message with the clonebox code attached (the remote client maps it back to the code). */
function coded(err: CloneboxError, m: Message): Message {
  return { ...m, Oem: { HawkFish: { Code: err.code } }, ...(err.hint ? { Resolution: `${m.Resolution} (${err.hint})` } : {}) };
}

/** What a library failure becomes on the wire. The message names what failed; the code rides along. */
export function fromLibraryError(err: unknown, ctx: { vm: string; snapshot?: string }): RedfishError {
  if (err instanceof RedfishError) return err;
  if (!(err instanceof CloneboxError)) {
    return new RedfishError(500, [baseMessage('InternalError')]);
  }
  const detail = (m: Message): Message => coded(err, { ...m, Message: `${m.Message} ${err.message}.`.replace(/\.\.$/, '.') });
  switch (err.code) {
    case 'VM_NOT_FOUND':
      return new RedfishError(404, [coded(err, baseMessage('ResourceNotFound', ['ComputerSystem', ctx.vm]))]);
    case 'SNAPSHOT_NOT_FOUND':
      return new RedfishError(404, [coded(err, baseMessage('ResourceNotFound', ['HawkFishSnapshot', ctx.snapshot ?? '']))]);
    case 'SNAPSHOT_EXISTS':
      return new RedfishError(409, [coded(err, baseMessage('ResourceAlreadyExists', ['HawkFishSnapshot', 'Name', ctx.snapshot ?? '']))]);
    case 'SNAPSHOT_HAS_CHILDREN':
    case 'VM_BUSY':
    case 'DOMAIN_RUNNING':
    case 'DOMAIN_NOT_RUNNING':
    case 'VM_NOT_RUNNING':
    case 'SNAPSHOT_NOT_READY':
      return new RedfishError(409, [detail(baseMessage('ResourceInUse'))]);
    case 'BAD_NAME':
      return new RedfishError(400, [coded(err, baseMessage('PropertyValueFormatError', [ctx.snapshot ?? '', 'Name']))]);
    case 'USAGE':
      return new RedfishError(400, [detail(baseMessage('GeneralError'))]);
    case 'ABORTED':
      return new RedfishError(503, [detail(baseMessage('ServiceShuttingDown'))]);
    case 'IO':
      if (/no space left/.test(err.message)) return new RedfishError(507, [detail(baseMessage('InsufficientStorage'))]);
      return new RedfishError(500, [detail(baseMessage('InternalError'))]);
    default:
      return new RedfishError(500, [detail(baseMessage('GeneralError'))]);
  }
}
