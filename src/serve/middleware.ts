/**
 * What runs before every route (the guard, http.ts): the service on the context, 503 once the service
 * is closing, `OData-Version` (4.0 on every response; a request asking for another gets 412), and
 * authentication (X-Auth-Token, else HTTP Basic; 401 with `WWW-Authenticate` and a Redfish body), with
 * failed Basic logins throttled per source address like session logins.
 */
import type { HttpBindings } from '@hono/node-server';
import type { Context } from 'hono';
import type { Env, Service } from './context.js';
import { RedfishError } from './errors.js';
import { type Guard, PUBLIC_PATHS } from './http.js';
import { baseMessage } from './messages.js';
import { SESSIONS } from './uris.js';

export function unauthorized(): RedfishError {
  return new RedfishError(401, [baseMessage('NoValidSession')], { 'WWW-Authenticate': 'Basic realm="clonebox", charset="UTF-8"' });
}

/** The peer's address (in-process requests made with app.request() have none). */
export function sourceAddress(c: Context<Env>): string {
  const env = c.env as Partial<HttpBindings> | undefined;
  return env?.incoming?.socket?.remoteAddress ?? 'in-process';
}

/**
 * A request header, from node's own parsed headers when the request came through a socket: hono's
 * c.req.header() makes the adapter build a fetch Headers object of every header first, which cost
 * more than the rest of a cached GET.
 */
function header(c: Context<Env>, lowerName: string): string | undefined {
  const h = (c.env as Partial<HttpBindings> | undefined)?.incoming?.headers;
  if (!h) return c.req.header(lowerName);
  const v = h[lowerName];
  return Array.isArray(v) ? v.join(', ') : v;
}

function checkODataVersion(c: Context<Env>): void {
  const asked = header(c, 'odata-version');
  if (asked !== undefined && asked.trim() !== '4.0') {
    throw new RedfishError(412, [baseMessage('HeaderInvalid', [`OData-Version: ${asked.slice(0, 32)}`])]);
  }
}

/** Undefined when done without waiting (no credentials needed, or a session token). */
function authenticate(c: Context<Env>, s: Service): Promise<void> | undefined {
  const raw = c.req.path;
  const path = raw.endsWith('/') ? raw.replace(/\/+$/, '') || '/' : raw;
  if (PUBLIC_PATHS.has(path) || (c.req.method === 'POST' && path === SESSIONS)) return undefined;
  const token = header(c, 'x-auth-token');
  if (token !== undefined) {
    const p = s.auth.token(token);
    if (!p) throw unauthorized();
    c.set('principal', p);
    return undefined;
  }
  return basicAuth(c, s);
}

async function basicAuth(c: Context<Env>, s: Service): Promise<void> {
  const { auth, throttle } = s;
  const basic = header(c, 'authorization');
  if (basic === undefined) throw unauthorized();
  const addr = sourceAddress(c);
  const wait = throttle.blockedFor(addr);
  if (wait > 0) throw new RedfishError(429, [baseMessage('ServiceTemporarilyUnavailable', [wait])], { 'Retry-After': String(wait) });
  const p = await auth.basic(basic);
  if (!p) {
    throttle.fail(addr);
    throw unauthorized();
  }
  c.set('principal', p);
}

/** The guard of every resource of the service `s`. */
export function serviceGuard(s: Service): Guard {
  return (c) => {
    c.set('service', s);
    if (s.tasks.isClosing) throw new RedfishError(503, [baseMessage('ServiceShuttingDown')]);
    checkODataVersion(c);
    const reading = s.auth.refresh();
    return reading ? reading.then(() => authenticate(c, s)) : authenticate(c, s);
  };
}
