/**
 * EventService and its Server-Sent Events stream (`ServerSentEventUri`): each message is a Redfish
 * Event resource in `id:` and `data:` lines; `Last-Event-ID` replays the kept events after that id;
 * `$filter` (filter.ts) narrows the stream to the records that match.
 */
import type { Hono } from 'hono';
import type { Env } from '../context.js';
import { badRequest } from '../errors.js';
import { type RedfishEvent, sseFrame } from '../events.js';
import { type EventFilter, FilterError, parseFilter } from '../filter.js';
import { json, resource } from '../http.js';
import { baseMessage } from '../messages.js';
import { EVENT_SERVICE, SSE } from '../uris.js';

function filterOf(text: string | undefined): EventFilter | null {
  if (text === undefined) return null;
  try {
    return parseFilter(text);
  } catch (err) {
    if (!(err instanceof FilterError)) throw err;
    throw badRequest({
      ...baseMessage('QueryParameterValueFormatError', [text.slice(0, 128), '$filter']),
      Resolution: `The filter has ${err.message}. Use comparisons (eq, ne) of EventFormatType, EventType, MessageId, OriginResource, RegistryPrefix or ResourceType with quoted strings, joined by and, or, not and parentheses.`,
    });
  }
}

/** The event with only the records the filter lets through; null when none does. */
function filtered(e: RedfishEvent, filter: EventFilter | null): RedfishEvent | null {
  if (!filter) return e;
  const kept = e.Events.filter(filter);
  if (kept.length === 0) return null;
  return kept.length === e.Events.length ? e : { ...e, Events: kept };
}

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
        SSEFilterPropertiesSupported: {
          EventFormatType: true,
          EventType: true,
          MessageId: true,
          MetricReportDefinition: false,
          OriginResource: true,
          RegistryPrefix: true,
          ResourceType: true,
          SubordinateResources: false,
        },
        Status: { State: 'Enabled', Health: 'OK' },
      }),
  });
  resource(app, SSE, {
    GET: (c) => {
      const s = c.get('service');
      const filter = filterOf(c.req.query('$filter'));
      const enc = new TextEncoder();
      const send = (controller: ReadableStreamDefaultController<Uint8Array>, e: RedfishEvent) => {
        const shown = filtered(e, filter);
        if (shown) controller.enqueue(enc.encode(sseFrame(shown)));
      };
      let stop: () => void = () => undefined;
      const stream = new ReadableStream<Uint8Array>({
        start(controller) {
          for (const e of s.bus.since(c.req.header('Last-Event-ID'))) send(controller, e);
          const unsubscribe = s.bus.subscribe((e) => send(controller, e));
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
