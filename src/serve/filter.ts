/**
 * `$filter` on the Server-Sent Events stream (DSP0266 "Server-sent events"): a client asks for only
 * some of the events with comparisons on the properties the specification names for the SSE stream,
 * joined by `and`, `or`, `not` and parentheses:
 *
 *   EventFormatType  'Event' (the only format this service sends)
 *   EventType        the record's EventType ('Other'; deprecated by DMTF, kept for older clients)
 *   MessageId        the whole id ('ResourceEvent.1.3.0.ResourceCreated') or without the version
 *                    ('ResourceEvent.ResourceCreated')
 *   OriginResource   the @odata.id of the record's OriginOfCondition
 *   RegistryPrefix   the MessageId's registry ('ResourceEvent', 'TaskEvent', 'HawkFish')
 *   ResourceType     the origin's schema ('HawkFishSnapshot', 'ComputerSystem', 'Task')
 *
 * with `eq` and `ne` on single-quoted strings ('' for a quote). Anything else (other properties or
 * operators, functions, numbers) is refused with 400 rather than ignored: a client that asked for a
 * narrower stream must not silently get all of it. The filter applies to each record of an Event;
 * an Event none of whose records match is not sent.
 */

const PROPERTIES = ['EventFormatType', 'EventType', 'MessageId', 'OriginResource', 'RegistryPrefix', 'ResourceType'] as const;
type Property = (typeof PROPERTIES)[number];

/** What a filter is evaluated on: one record of an Event. */
interface FilterSubject {
  EventType: string;
  MessageId: string;
  OriginOfCondition: { '@odata.id': string };
}

type Node = { op: 'cmp'; prop: Property; eq: boolean; value: string } | { op: 'and' | 'or'; a: Node; b: Node } | { op: 'not'; a: Node };

export type EventFilter = (r: FilterSubject) => boolean;

/** Longest filter accepted: a few dozen comparisons. */
const MAX_FILTER = 2048;
const MAX_DEPTH = 32;

export class FilterError extends Error {}

type Token = { kind: 'word' | 'string' | '(' | ')'; text: string };

function tokens(text: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  while (i < text.length) {
    const ch = text[i]!;
    if (ch === ' ' || ch === '\t') {
      i++;
    } else if (ch === '(' || ch === ')') {
      out.push({ kind: ch, text: ch });
      i++;
    } else if (ch === "'") {
      let s = '';
      i++;
      for (;;) {
        if (i >= text.length) throw new FilterError('an unterminated string');
        if (text[i] === "'") {
          if (text[i + 1] === "'") {
            s += "'";
            i += 2;
            continue;
          }
          i++;
          break;
        }
        s += text[i];
        i++;
      }
      out.push({ kind: 'string', text: s });
    } else {
      const m = /^[A-Za-z_][A-Za-z0-9_.]*/.exec(text.slice(i));
      if (!m) throw new FilterError(`an unexpected ${JSON.stringify(ch)}`);
      out.push({ kind: 'word', text: m[0] });
      i += m[0].length;
    }
  }
  return out;
}

/** Parses a `$filter` value; throws FilterError (a message for the 400) when it is not one this service supports. */
export function parseFilter(text: string): EventFilter {
  if (text.length > MAX_FILTER) throw new FilterError(`longer than ${MAX_FILTER} characters`);
  const ts = tokens(text);
  let pos = 0;
  const peek = () => ts[pos];
  const word = (w: string) => peek()?.kind === 'word' && peek()?.text === w;

  const primary = (depth: number): Node => {
    if (depth > MAX_DEPTH) throw new FilterError('nested too deeply');
    const t = ts[pos++];
    if (!t) throw new FilterError('an incomplete expression');
    if (t.kind === '(') {
      const n = orExpr(depth + 1);
      if (ts[pos++]?.kind !== ')') throw new FilterError('a missing )');
      return n;
    }
    if (t.kind === 'word' && t.text === 'not') return { op: 'not', a: primary(depth + 1) };
    if (t.kind !== 'word' || !(PROPERTIES as readonly string[]).includes(t.text)) {
      throw new FilterError(`${JSON.stringify(t.text)} is not a property the stream can be filtered on (${PROPERTIES.join(', ')})`);
    }
    const op = ts[pos++];
    if (op?.kind !== 'word' || (op.text !== 'eq' && op.text !== 'ne')) {
      throw new FilterError(`${JSON.stringify(op?.text ?? '')} is not a supported operator (eq, ne)`);
    }
    const v = ts[pos++];
    if (v?.kind !== 'string') throw new FilterError(`${t.text} is compared with a quoted string`);
    return { op: 'cmp', prop: t.text as Property, eq: op.text === 'eq', value: v.text };
  };
  const andExpr = (depth: number): Node => {
    let n = primary(depth);
    while (word('and')) {
      pos++;
      n = { op: 'and', a: n, b: primary(depth) };
    }
    return n;
  };
  const orExpr = (depth: number): Node => {
    let n = andExpr(depth);
    while (word('or')) {
      pos++;
      n = { op: 'or', a: n, b: andExpr(depth) };
    }
    return n;
  };

  const tree = orExpr(0);
  if (pos !== ts.length) throw new FilterError(`unexpected ${JSON.stringify(ts[pos]?.text)}`);
  return (r) => evaluate(tree, r);
}

/** `Prefix.1.2.3.Key` → `Prefix.Key` */
function unversioned(id: string): string {
  const parts = id.split('.');
  return parts.length > 2 ? `${parts[0]}.${parts[parts.length - 1]}` : id;
}

function resourceType(uri: string): string {
  if (/\/Oem\/HawkFish\/Snapshots\/[^/]+$/.test(uri)) return 'HawkFishSnapshot';
  if (/\/TaskService\/Tasks\/[^/]+$/.test(uri)) return 'Task';
  if (/\/Systems\/[^/]+$/.test(uri)) return 'ComputerSystem';
  return '';
}

function matches(prop: Property, value: string, r: FilterSubject): boolean {
  switch (prop) {
    case 'EventFormatType':
      return value === 'Event';
    case 'EventType':
      return r.EventType === value;
    case 'MessageId':
      return r.MessageId === value || unversioned(r.MessageId) === value;
    case 'OriginResource':
      return r.OriginOfCondition['@odata.id'] === value.replace(/\/+$/, '');
    case 'RegistryPrefix':
      return r.MessageId.split('.')[0] === value;
    case 'ResourceType':
      return resourceType(r.OriginOfCondition['@odata.id']) === value;
  }
}

function evaluate(n: Node, r: FilterSubject): boolean {
  switch (n.op) {
    case 'cmp':
      return matches(n.prop, n.value, r) === n.eq;
    case 'and':
      return evaluate(n.a, r) && evaluate(n.b, r);
    case 'or':
      return evaluate(n.a, r) || evaluate(n.b, r);
    case 'not':
      return !evaluate(n.a, r);
  }
}
