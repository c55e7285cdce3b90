/**
 * The catalog's Group record (src/sync/catalog-records.ts, docs/sync.md "Catalog"): a round trip, every
 * truncation and a trailing byte refused, random mutations decoded or refused with WireError, and the
 * limits a hostile author could break (member count, order, duplicates, consistency) refused.
 */
import { describe, expect, it } from 'vitest';
import { decodeRecord, encodeRecord, type GroupRecordEntry, MAX_GROUP_MEMBERS } from '../src/sync/catalog-records.js';
import { WireError } from '../src/sync/messages.js';
import { rng } from './helpers/random.js';

const id = (n: number) => Buffer.alloc(32, n);

const sample: GroupRecordEntry = {
  kind: 'group',
  group: 'shop',
  name: 'before-migration',
  created_at: '2026-12-02T10:05:00.000Z',
  description: 'db and app, paused together',
  tags: ['golden'],
  type: 'disk',
  consistency: 'paused',
  pause_ms: 0,
  auto_created: false,
  auto_policy: null,
  members: [
    { vm: 'app', snapshot: 'before-migration', content_id: id(1) },
    { vm: 'db', snapshot: 'before-migration', content_id: id(2) },
  ],
};

describe('catalog Group record', () => {
  it('round-trips (a null pause and a 0 ms pause stay apart), and refuses every truncation and a trailing byte', () => {
    for (const value of [sample, { ...sample, pause_ms: null, description: null, tags: [], auto_created: true, auto_policy: 'nightly' }]) {
      const buf = encodeRecord(value);
      expect(decodeRecord(buf)).toEqual(value);
      for (let n = 0; n < buf.length; n++) expect(() => decodeRecord(buf.subarray(0, n)), `cut at ${n}`).toThrow(WireError);
      expect(() => decodeRecord(Buffer.concat([buf, Buffer.from([0])]))).toThrow(/trailing/);
    }
  });

  it('survives random mutations: decoded or WireError, never anything else', () => {
    const r = rng(14);
    const buf = encodeRecord(sample);
    for (let k = 0; k < 500; k++) {
      const mut = Buffer.from(buf);
      for (let j = r.int(1, 4); j > 0; j--) mut[r.int(0, mut.length)] = r.u32() & 0xff;
      try {
        decodeRecord(mut);
      } catch (err) {
        expect(err).toBeInstanceOf(WireError);
      }
    }
  });

  it('refuses what a hostile author could use: no members, too many, out of order or twice, unknown values', () => {
    const member = (i: number) => ({ vm: `vm${String(i).padStart(3, '0')}`, snapshot: 's', content_id: id(i) });
    const bad: [string, Partial<GroupRecordEntry>, RegExp][] = [
      ['no member', { members: [] }, /member count/],
      ['too many', { members: Array.from({ length: MAX_GROUP_MEMBERS + 1 }, (_, i) => member(i)) }, /member count/],
      ['out of order', { members: [...sample.members].reverse() }, /members order/],
      ['twice', { members: [sample.members[0]!, sample.members[0]!] }, /members order/],
      ['bad consistency', { consistency: 'whatever' as GroupRecordEntry['consistency'] }, /consistency/],
      ['bad type', { type: 'memory' as GroupRecordEntry['type'] }, /type/],
      ['bad group name', { group: '../etc' }, /group name/],
      ['bad member name', { members: [{ ...sample.members[0]!, snapshot: 'a/b' }] }, /snapshot name/],
      ['bad time', { created_at: 'yesterday' }, /time/],
    ];
    for (const [what, change, re] of bad) expect(() => decodeRecord(encodeRecord({ ...sample, ...change })), what).toThrow(re);
    expect(decodeRecord(encodeRecord({ ...sample, members: Array.from({ length: MAX_GROUP_MEMBERS }, (_, i) => member(i)) }))).toMatchObject({ kind: 'group' });
  });
});
