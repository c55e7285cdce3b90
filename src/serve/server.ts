/**
 * `clonebox serve`: the Redfish app on a socket. HTTPS unless told otherwise, and plain HTTP only on
 * a loopback address. close() is graceful: no new connections, queued tasks cancelled, running tasks
 * finish (each is one journaled operation, so even a SIGKILL leaves nothing the next command cannot
 * recover), SSE streams end, then the sockets close.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { serve } from '@hono/node-server';
import { type Clonebox, CloneboxError } from '../index.js';
import { createRedfishApp } from './app.js';
import type { ServiceOptions } from './context.js';
import { tlsMaterial } from './tls.js';

export interface ServeOptions extends ServiceOptions {
  /** host:port (default 127.0.0.1:8443; port 0 picks a free one). */
  listen?: string;
  tlsCert?: string;
  tlsKey?: string;
  /** Plain HTTP: only on a loopback address. */
  insecureHttp?: boolean;
  /**
   * Runs the scheduler (cb.schedule.runDue) at start and then this often, in-process, so a host that
   * runs the service needs no cron entry (default 60 000; 0: off). Passes never overlap (the home's
   * schedule lock), also with a `clonebox schedule run` from cron.
   */
  scheduleEveryMs?: number;
  /** Warnings and notices of scheduler passes (default: dropped). */
  onScheduleWarning?: (message: string) => void;
}

export interface RunningService {
  url: string;
  host: string;
  port: number;
  /** SHA-256 fingerprint of the certificate (null for plain HTTP). */
  fingerprint: string | null;
  /** True when this start made the self-signed certificate. */
  certificateCreated: boolean;
  certFile: string | null;
  close(): Promise<void>;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(listen);
  const port = Number(m?.[3]);
  if (!m || port > 65535) throw CloneboxError.USAGE(`invalid --listen ${JSON.stringify(listen)}`, { hint: 'use HOST:PORT, e.g. 127.0.0.1:8443 or [::1]:8443' });
  return { host: m[1] ?? m[2] ?? '127.0.0.1', port };
}

/** The service's UUID, kept in the home so that it survives restarts (ServiceRoot.UUID must be stable). */
async function serviceUuid(home: string): Promise<string> {
  const file = path.join(home, 'serve', 'uuid');
  try {
    const v = (await readFile(file, 'utf8')).trim();
    if (/^[0-9a-f-]{36}$/.test(v)) return v;
  } catch {
    // first start
  }
  const id = randomUUID();
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await writeFile(`${file}.tmp`, `${id}\n`);
  await rename(`${file}.tmp`, file);
  return id;
}

export async function startService(cb: Clonebox, opts: ServeOptions = {}): Promise<RunningService> {
  const { host, port } = parseListen(opts.listen ?? '127.0.0.1:8443');
  if (opts.insecureHttp && !LOOPBACK.has(host)) {
    throw CloneboxError.USAGE(`plain HTTP is allowed only on a loopback address, not ${host}`, {
      hint: 'drop --insecure-http (HTTPS is the default) or listen on 127.0.0.1',
    });
  }
  const tls = opts.insecureHttp
    ? null
    : await tlsMaterial(cb.home, { host, ...(opts.tlsCert ? { cert: opts.tlsCert } : {}), ...(opts.tlsKey ? { key: opts.tlsKey } : {}) });
  const redfish = await createRedfishApp(cb, { ...opts, uuid: await serviceUuid(cb.home) });
  const server = await new Promise<ReturnType<typeof serve>>((resolve, reject) => {
    const s = serve(
      {
        fetch: redfish.app.fetch,
        hostname: host,
        port,
        ...(tls ? { createServer: createHttpsServer, serverOptions: { cert: tls.cert, key: tls.key } } : {}),
      },
      () => resolve(s),
    );
    s.once('error', (err: NodeJS.ErrnoException) => {
      reject(
        err.code === 'EADDRINUSE'
          ? CloneboxError.USAGE(`address ${host}:${port} is in use`, { hint: 'choose another --listen port' })
          : CloneboxError.IO(`cannot listen on ${host}:${port}: ${err.message}`),
      );
    });
  }).catch(async (err: unknown) => {
    await redfish.close();
    throw err;
  });
  const every = opts.scheduleEveryMs ?? 60_000;
  const stopSchedule = new AbortController();
  let pass: Promise<unknown> = Promise.resolve();
  let timer: NodeJS.Timeout | null = null;
  const runPass = () => {
    pass = pass.then(() =>
      cb.schedule
        .runDue({ signal: stopSchedule.signal, onWarning: (w) => opts.onScheduleWarning?.(w.message) })
        .catch((err: unknown) => opts.onScheduleWarning?.(`scheduler pass failed: ${(err as Error).message}`)),
    );
  };
  if (every > 0) {
    runPass();
    timer = setInterval(runPass, every);
    timer.unref();
  }
  const addr = server.address() as AddressInfo;
  const shown = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  let closing: Promise<void> | null = null;
  return {
    url: `${tls ? 'https' : 'http'}://${shown}:${addr.port}`,
    host: addr.address,
    port: addr.port,
    fingerprint: tls?.fingerprint ?? null,
    certificateCreated: tls?.created ?? false,
    certFile: tls?.certFile ?? null,
    close() {
      closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        if (timer) clearInterval(timer);
        stopSchedule.abort();
        await pass;
        await redfish.close();
        const s = server as unknown as { closeAllConnections?: () => void };
        s.closeAllConnections?.();
        await closed;
      })();
      return closing;
    },
  };
}
