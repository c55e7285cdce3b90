/**
 * HTTP plumbing shared by the routes: JSON replies with Redfish's headers, bounded JSON bodies checked
 * property by property, the method table of a resource (405 with `Allow` for the others), and the
 * role a request needs.
 */
import type { Context, Hono } from 'hono';
import type { Role } from './accounts.js';
import { allows } from './auth.js';
import type { Env } from './context.js';
import { badRequest, RedfishError } from './errors.js';
import { MAX_BODY } from './limits.js';
import { baseMessage, oemMessage } from './messages.js';

const JSON_TYPE = 'application/json; charset=utf-8';

/**
 * Replies made here carry OData-Version in a plain header object; others get it set afterwards.
 * Why both: setting a header on a Response turns its header object into a Headers instance, which
 * cost the hot GETs a tenth of their time (the node adapter writes a plain object straight out).
 */
const withOData = new WeakSet<Response>();

function reply(body: string | null, status: number, headers: Record<string, string>): Response {
  const r = new Response(body, { status, headers: { 'OData-Version': '4.0', ...headers } });
  withOData.add(r);
  return r;
}

/** Makes sure the reply carries `OData-Version: 4.0` (every response does). */
function odata(r: Response): Response {
  if (!withOData.has(r)) r.headers.set('OData-Version', '4.0');
  return r;
}

export function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  // No body, no Content-Type: a client that sees application/json tries to parse the empty body.
  if (status === 204 || body === null) return reply(null, status, headers);
  return reply(JSON.stringify(body), status, { 'Content-Type': JSON_TYPE, ...headers });
}

/** A reply whose JSON text is already made (cached bodies). */
export function jsonText(text: string, headers: Record<string, string> = {}, status = 200): Response {
  return reply(text, status, { 'Content-Type': JSON_TYPE, ...headers });
}

/** Collection resource in Redfish's shape. */
export function collection(id: string, type: string, name: string, members: string[]): Record<string, unknown> {
  return {
    '@odata.type': type,
    '@odata.id': id,
    Name: name,
    Members: members.map((m) => ({ '@odata.id': m })),
    'Members@odata.count': members.length,
  };
}

/**
 * The request body as a JSON object: 413 above MAX_BODY (counted while reading, whatever
 * Content-Length says), 400 MalformedJSON when it does not parse or is not an object. An empty body
 * is `{}` when `emptyOk`.
 */
export async function readObject(c: Context<Env>, emptyOk = false): Promise<Record<string, unknown>> {
  const declared = Number(c.req.header('Content-Length') ?? '0');
  if (declared > MAX_BODY) throw new RedfishError(413, [oemMessage('RequestBodyTooLarge', [MAX_BODY])]);
  const body = c.req.raw.body;
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (body) {
    const reader = body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > MAX_BODY) {
        await reader.cancel().catch(() => undefined);
        throw new RedfishError(413, [oemMessage('RequestBodyTooLarge', [MAX_BODY])]);
      }
      chunks.push(value);
    }
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '' && emptyOk) return {};
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw badRequest(baseMessage('MalformedJSON'));
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw badRequest(baseMessage('MalformedJSON'));
  return v as Record<string, unknown>;
}

type Kind = 'string' | 'boolean' | 'integer' | 'string[]' | 'string|null' | 'object';

function typeOk(v: unknown, kind: Kind): boolean {
  switch (kind) {
    case 'string':
      return typeof v === 'string';
    case 'string|null':
      return v === null || typeof v === 'string';
    case 'boolean':
      return typeof v === 'boolean';
    case 'integer':
      return typeof v === 'number' && Number.isSafeInteger(v);
    case 'string[]':
      return Array.isArray(v) && v.every((x) => typeof x === 'string');
    case 'object':
      return typeof v === 'object' && v !== null && !Array.isArray(v);
  }
}

/**
 * Checks an object's properties against a schema: unknown ones (other than `@` annotations) are
 * PropertyUnknown (or ActionParameterUnknown for an action), wrong types PropertyValueTypeError.
 */
export function checkProps(obj: Record<string, unknown>, schema: Record<string, Kind>, action?: string, prefix = ''): void {
  for (const [k, v] of Object.entries(obj)) {
    if (k.startsWith('@')) continue;
    const kind = schema[k];
    if (!kind) {
      throw badRequest(
        action
          ? baseMessage('ActionParameterUnknown', [action, k])
          : baseMessage('PropertyUnknown', [`${prefix}${k}`], { RelatedProperties: [`#/${prefix}${k}`] }),
      );
    }
    if (!typeOk(v, kind)) {
      const shown = typeof v === 'string' ? v : JSON.stringify(v);
      throw badRequest(baseMessage('PropertyValueTypeError', [String(shown).slice(0, 64), `${prefix}${k}`], { RelatedProperties: [`#/${prefix}${k}`] }));
    }
  }
}

type Method = 'GET' | 'POST' | 'PATCH' | 'DELETE';
export type Handler = (c: Context<Env>) => Promise<Response> | Response;
/**
 * What runs before every handler (middleware.ts: the service, shutdown, OData-Version, authentication).
 * Undefined when it finished without waiting (a token, nothing to re-read): a handler that can answer
 * from memory then answers synchronously, and the node adapter writes the reply without a promise.
 */
export type Guard = (c: Context<Env>) => Promise<void> | undefined;

const guards = new WeakMap<Hono<Env>, Guard>();

/** Sets the guard of an app's resources: call before registering them. */
export function guardResources(app: Hono<Env>, guard: Guard): void {
  guards.set(app, guard);
}

/** A handler behind the app's guard, its reply with OData-Version. */
export function guarded(app: Hono<Env>, h: Handler): Handler {
  const guard = guards.get(app);
  if (!guard) throw new Error('guardResources() was not called for this app');
  return (c) => {
    const waiting = guard(c);
    if (waiting) return waiting.then(() => h(c)).then(odata);
    const r = h(c);
    return r instanceof Promise ? r.then(odata) : odata(r);
  };
}

/** Methods a request may name that a resource does not serve get 405 (others: 404). HEAD follows GET. */
const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;

/**
 * Registers a resource's methods; any other method gets 405 with `Allow`. Each route is one handler
 * with the guard inside it rather than app-wide middleware: hono then skips its middleware chain
 * (a third of the time of a cached GET).
 */
export function resource(app: Hono<Env>, path: string, handlers: Partial<Record<Method, Handler>>): void {
  const methods = Object.keys(handlers) as Method[];
  for (const m of methods) {
    const h = handlers[m];
    if (h) app.on(m, path, guarded(app, h));
  }
  const allow = [...methods, ...(methods.includes('GET') ? ['HEAD'] : [])].join(', ');
  const others = METHODS.filter((m) => !(methods as string[]).includes(m));
  if (others.length === 0) return;
  app.on(
    others,
    path,
    guarded(app, () => {
      throw new RedfishError(405, [baseMessage('OperationNotAllowed')], { Allow: allow });
    }),
  );
}

/** Throws 403 unless the request's principal has at least `role`. */
export function need(c: Context<Env>, role: Role): void {
  const p = c.get('principal');
  if (!allows(p.role, role)) throw new RedfishError(403, [baseMessage('InsufficientPrivilege')]);
}

/** Marks a route that needs no authentication (the service root documents, login). */
export const PUBLIC_PATHS = new Set(['/redfish', '/redfish/v1', '/redfish/v1/odata', '/redfish/v1/$metadata']);
