/**
 * EventService and its Server-Sent Events stream (`ServerSentEventUri`): each message is a Redfish
 * Event resource in `id:` and `data:` lines; `Last-Event-ID` replays the kept events after that id.
 */
import type { Hono } from 'hono';
import type { Env } from '../context.js';
import { sseFrame } from '../events.js';
import { json, resource } from '../http.js';
import { EVENT_SERVICE, SSE } from '../uris.js';

export function eventRoutes(app: Hono<Env>): void {
  resource(app, EVENT_SERVICE, {
    GET: () =>
      json({
        '@odata.type': '#EventService.v1_10_0.EventService',
        '@odata.id': EVENT_SERVICE,
        Id: 'EventService',
        Name: 'Event Service',
        ServiceEnabled: true,
        EventFormatTypes: ['Event'],
        ServerSentEventUri: SSE,
        Status: { State: 'Enabled', Health: 'OK' },
      }),
  });
  resource(app, SSE, {
    GET: (c) => {
      const s = c.get('service');
      const enc = new TextEncoder();
      let stop: () => void = () => undefined;
      const stream = new ReadableStream<Uint8Array>({
        start(controller) {
          for (const e of s.bus.since(c.req.header('Last-Event-ID'))) controller.enqueue(enc.encode(sseFrame(e)));
          const unsubscribe = s.bus.subscribe((e) => controller.enqueue(enc.encode(sseFrame(e))));
          const end = () => {
            unsubscribe();
            s.stopping.removeEventListener('abort', end);
            c.req.raw.signal.removeEventListener('abort', end);
            try {
              controller.close();
            } catch {
              // already closed by the client
            }
          };
          stop = () => {
            unsubscribe();
            s.stopping.removeEventListener('abort', end);
            c.req.raw.signal.removeEventListener('abort', end);
          };
          s.stopping.addEventListener('abort', end);
          c.req.raw.signal.addEventListener('abort', end);
        },
        cancel() {
          stop();
        },
      });
      return new Response(stream, {
        status: 200,
        headers: { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', 'X-Accel-Buffering': 'no' },
      });
    },
  });
}
