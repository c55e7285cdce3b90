/**
 * The event service: Redfish Event resources (DSP0266 "Eventing", Event.v1_7_0) for the SSE stream.
 * Ids are numbers that only grow, starting from the clock at service start (so an id from before a
 * restart is older than every new one); the last EVENT_BUFFER events are kept for `Last-Event-ID`.
 *
 * Snapshot changes come from the home's event log (cb.events), whoever made them: this service, the
 * CLI, a scheduler. Task events come from the task service.
 */
import type { HomeEvent } from '../index.js';
import { EVENT_BUFFER } from './limits.js';
import { type Message, oemMessage, resourceMessage } from './messages.js';
import { snapshotUri, systemUri } from './uris.js';

interface EventRecord {
  EventType: 'Other';
  EventId: string;
  EventTimestamp: string;
  MemberId: string;
  MessageId: string;
  Message: string;
  MessageArgs: string[];
  MessageSeverity: Message['MessageSeverity'];
  Severity: Message['MessageSeverity'];
  OriginOfCondition: { '@odata.id': string };
}

export interface RedfishEvent {
  '@odata.type': '#Event.v1_7_0.Event';
  Id: string;
  Name: string;
  Context: string;
  Events: EventRecord[];
}

type Listener = (e: RedfishEvent) => void;

export class EventBus {
  private next: number;
  private readonly buffer: RedfishEvent[] = [];
  private readonly listeners = new Set<Listener>();

  constructor(private readonly now: () => number) {
    this.next = now() * 1000;
  }

  /** Publishes one Event resource holding these messages, each about its origin. */
  publish(items: { message: Message; origin: string }[]): RedfishEvent | null {
    if (items.length === 0) return null;
    const id = String(++this.next);
    const ts = new Date(this.now()).toISOString();
    const ev: RedfishEvent = {
      '@odata.type': '#Event.v1_7_0.Event',
      Id: id,
      Name: 'clonebox snapshot service event',
      Context: '',
      Events: items.map(({ message: m, origin }, i) => ({
        EventType: 'Other',
        EventId: `${id}.${i}`,
        EventTimestamp: ts,
        MemberId: String(i),
        MessageId: m.MessageId,
        Message: m.Message,
        MessageArgs: m.MessageArgs,
        MessageSeverity: m.MessageSeverity,
        Severity: m.MessageSeverity,
        OriginOfCondition: { '@odata.id': origin },
      })),
    };
    this.buffer.push(ev);
    if (this.buffer.length > EVENT_BUFFER) this.buffer.shift();
    for (const l of this.listeners) l(ev);
    return ev;
  }

  /** The kept events after `lastId` (all kept ones for an id older than the buffer; none for a bad id). */
  since(lastId: string | undefined): RedfishEvent[] {
    if (lastId === undefined || !/^\d{1,20}$/.test(lastId)) return [];
    const n = Number(lastId);
    return this.buffer.filter((e) => Number(e.Id) > n);
  }

  subscribe(l: Listener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /** The events for changes read from the home's event log, one Event resource per change. */
  publishHome(events: readonly HomeEvent[]): void {
    for (const e of events) {
      const origin = snapshotUri(e.vm, e.snapshot);
      switch (e.op) {
        case 'created':
          this.publish([{ message: resourceMessage('ResourceCreated'), origin }]);
          break;
        case 'deleted':
          this.publish([{ message: resourceMessage('ResourceRemoved'), origin }]);
          break;
        case 'changed':
          this.publish([{ message: resourceMessage('ResourceChanged'), origin }]);
          break;
        case 'restored':
          this.publish([
            { message: oemMessage('SnapshotReverted', [e.vm, e.snapshot]), origin: systemUri(e.vm) },
            { message: resourceMessage('ResourceChanged'), origin: systemUri(e.vm) },
          ]);
          break;
      }
    }
  }
}

/** One SSE message: `id:` and `data:` lines only (JSON has no raw newline, so one data line). */
export function sseFrame(e: RedfishEvent): string {
  return `id: ${e.Id}\ndata: ${JSON.stringify(e)}\n\n`;
}
