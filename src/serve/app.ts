/**
 * The Redfish application: the hono app with its middleware and routes, on an open Clonebox. It has no
 * socket of its own: `server.ts` puts it on HTTPS, tests call `app.request()` in-process.
 */
import { randomUUID } from 'node:crypto';
import { statfs } from 'node:fs/promises';
import { Hono } from 'hono';
import type { Clonebox, HomeEventTail } from '../index.js';
import { Authenticator } from './auth.js';
import type { Env, Service, ServiceOptions } from './context.js';
import { errorBody, RedfishError } from './errors.js';
import { EventBus } from './events.js';
import { guarded, guardResources, jsonText } from './http.js';
import { LoginThrottle } from './limits.js';
import { baseMessage } from './messages.js';
import { serviceGuard } from './middleware.js';
import { eventRoutes } from './routes/events.js';
import { rootRoutes } from './routes/root.js';
import { sessionRoutes } from './routes/sessions.js';
import { snapshotRoutes } from './routes/snapshots.js';
import { systemRoutes } from './routes/systems.js';
import { taskRoutes } from './routes/tasks.js';
import { TaskService } from './tasks.js';

export interface RedfishApp {
  /** The hono app: `app.fetch` for a server, `app.request()` in tests. */
  app: Hono<Env>;
  service: Service;
  /** Stops: queued tasks are cancelled, running ones finish, SSE streams end, the event tail closes. */
  close(): Promise<void>;
}

async function statfsFree(dir: string): Promise<number> {
  const st = await statfs(dir);
  return st.bavail * st.bsize;
}

function respond(err: RedfishError): Response {
  return jsonText(JSON.stringify(errorBody(err.messages)), err.headers, err.status);
}

export async function createRedfishApp(cb: Clonebox, opts: ServiceOptions & { uuid?: string } = {}): Promise<RedfishApp> {
  const now = opts.now ?? Date.now;
  const bus = new EventBus(now);
  const stop = new AbortController();
  const tail: HomeEventTail = await cb.events.tail();
  const syncHome = async () => bus.publishHome(await tail.read());
  tail.onAppend(() => {
    void syncHome().catch(() => undefined);
  });
  const service: Service = {
    cb,
    auth: new Authenticator(cb.home, now),
    tasks: new TaskService(bus, now, syncHome),
    bus,
    throttle: new LoginThrottle(now),
    now,
    freeBytes: opts.freeBytes ?? statfsFree,
    pending: new Map(),
    lists: new Map(),
    syncHome,
    stopping: stop.signal,
    uuid: opts.uuid ?? randomUUID(),
  };

  const app = new Hono<Env>({ strict: false });
  guardResources(app, serviceGuard(service));
  rootRoutes(app);
  sessionRoutes(app);
  systemRoutes(app);
  snapshotRoutes(app);
  taskRoutes(app);
  eventRoutes(app);
  // Behind the guard like every resource: without credentials an unknown URI is 401, not 404.
  app.notFound(
    guarded(app, (c) => {
      throw new RedfishError(404, [baseMessage('ResourceMissingAtURI', [c.req.path.slice(0, 256)])]);
    }),
  );
  app.onError((err) => {
    if (err instanceof RedfishError) return respond(err);
    return respond(new RedfishError(500, [baseMessage('InternalError')]));
  });

  return {
    app,
    service,
    async close() {
      await service.tasks.shutdown();
      await syncHome().catch(() => undefined);
      stop.abort();
      await tail.close();
    },
  };
}
