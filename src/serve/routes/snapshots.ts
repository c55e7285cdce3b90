/**
 * A system's snapshots (`/Systems/{id}/Oem/HawkFish/Snapshots`): the collection (newest first), its
 * members, create (POST on the collection), revert (the Revert action, at the document's path
 * `Actions/Oem.HawkFish.Snapshot.Revert` and at `Actions/HawkFishSnapshot.Revert`) and delete. Create,
 * revert and delete are tasks (tasks.ts); while one runs the snapshot shows Creating, Reverting or
 * Deleting.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { Context, Hono } from 'hono';
import { NAME_RE, type SnapshotView } from '../../index.js';
import { type Env, type Listing, type PendingSnapshot, pendingKey, type Service } from '../context.js';
import { badRequest, fromLibraryError, notFound, RedfishError } from '../errors.js';
import { checkProps, collection, json, jsonText, need, readObject, resource } from '../http.js';
import { MAX_DESCRIPTION, MAX_TAG, MAX_TAGS } from '../limits.js';
import { baseMessage, oemMessage, warningMessage } from '../messages.js';
import type { FinalResponse, TaskContext } from '../tasks.js';
import { monitorUri, snapshotsUri, snapshotUri } from '../uris.js';
import { showVm, systemId } from './systems.js';

const STATE: Record<SnapshotView['state'], string> = {
  creating: 'Creating',
  ready: 'Ready',
  reverting: 'Reverting',
  deleting: 'Deleting',
  failed: 'Failed',
};

function snapshotId(c: Context<Env>): string {
  const id = c.req.param('sid') ?? '';
  if (!NAME_RE.test(id)) throw notFound('HawkFishSnapshot', id.slice(0, 140), 'SNAPSHOT_NOT_FOUND');
  return id;
}

function actions(vm: string, name: string): Record<string, unknown> {
  const base = `${snapshotUri(vm, name)}/Actions`;
  return {
    '#HawkFishSnapshot.Revert': { target: `${base}/HawkFishSnapshot.Revert` },
    Oem: { '#Oem.HawkFish.Snapshot.Revert': { target: `${base}/Oem.HawkFish.Snapshot.Revert` } },
  };
}

function etagOf(body: Record<string, unknown>): string {
  return `W/"${createHash('sha256').update(JSON.stringify(body)).digest('base64url').slice(0, 22)}"`;
}

/** The Redfish member for a snapshot record, with a task's transient state over the recorded one. */
function member(s: SnapshotView, pending: PendingSnapshot | undefined): Record<string, unknown> {
  const body: Record<string, unknown> = {
    '@odata.type': '#HawkFishSnapshot.v1_0_0.HawkFishSnapshot',
    '@odata.id': snapshotUri(s.vm_name, s.name),
    Id: s.name,
    Name: s.name,
    Description: s.description,
    CreatedTime: s.created_at,
    SizeBytes: s.size_bytes,
    SnapshotState: pending?.state ?? STATE[s.state],
    Type: s.type,
    Quiesced: s.quiesced,
    Current: s.current,
    Tags: s.tags,
    AutoCreated: s.auto_created,
    ExpiresAt: s.expires_at,
    Links: {
      Parent: s.parent ? { '@odata.id': snapshotUri(s.vm_name, s.parent) } : null,
      Children: s.children.map((ch) => ({ '@odata.id': snapshotUri(s.vm_name, ch) })),
      'Children@odata.count': s.children.length,
    },
    Actions: actions(s.vm_name, s.name),
  };
  body['@odata.etag'] = etagOf(body);
  return body;
}

/** The member shown for a snapshot a task is still creating (no record exists yet). */
function creatingMember(vm: string, name: string, p: PendingSnapshot): Record<string, unknown> {
  const cr = p.created;
  return {
    '@odata.type': '#HawkFishSnapshot.v1_0_0.HawkFishSnapshot',
    '@odata.id': snapshotUri(vm, name),
    Id: name,
    Name: name,
    Description: cr?.description ?? null,
    CreatedTime: cr?.time ?? null,
    SizeBytes: null,
    SnapshotState: p.state,
    Type: cr?.type ?? 'disk',
    Quiesced: null,
    Current: false,
    Tags: cr?.tags ?? [],
    AutoCreated: false,
    ExpiresAt: null,
    Links: { Parent: null, Children: [], 'Children@odata.count': 0 },
    Actions: actions(vm, name),
  };
}

/**
 * The VM's snapshots, newest first: read again only when the records changed (two stat calls per
 * request instead of reading every record; the collection of a VM with 100 snapshots is the hot path).
 */
async function listing(s: Service, vm: string): Promise<Listing> {
  try {
    const stamp = await s.cb.snapshots.stamp(vm);
    const cached = s.lists.get(vm);
    if (stamp !== null && cached?.stamp === stamp) return cached;
    // Read after the stamp: a change in between leaves a newer list under an older stamp, which the
    // next request's stamp replaces.
    const fresh: Listing = { stamp, list: await s.cb.snapshots.list(vm), bodies: new Map() };
    if (stamp !== null) {
      if (s.lists.size > 10_000) s.lists.clear();
      s.lists.set(vm, fresh);
    }
    return fresh;
  } catch (err) {
    throw fromLibraryError(err, { vm });
  }
}

/**
 * The reply body kept for `key` ('' for the collection, else a snapshot's name) when it is known
 * without I/O to be current (no task on the VM, the records unchanged): the hot path, answered
 * synchronously.
 */
function keptBody(s: Service, vm: string, key: string): { text: string; etag: string | null } | undefined {
  if (busy(s, vm)) return undefined;
  const stamp = s.cb.snapshots.knownStamp(vm);
  if (stamp === undefined) return undefined;
  const l = s.lists.get(vm);
  return l?.stamp === stamp ? l.bodies.get(key) : undefined;
}

async function listVm(s: Service, vm: string): Promise<SnapshotView[]> {
  return (await listing(s, vm)).list;
}

/** Whether a task is working on one of the VM's snapshots (replies then show its state: no cached body). */
function busy(s: Service, vm: string): boolean {
  if (s.pending.size === 0) return false;
  for (const k of s.pending.keys()) if (k.startsWith(`${vm}/`)) return true;
  return false;
}

/** Creating snapshots of a VM (pending, no record yet), newest first. */
function creating(s: Service, vm: string, recorded: Set<string>): [string, PendingSnapshot][] {
  const out: [string, PendingSnapshot][] = [];
  for (const [k, p] of s.pending) {
    const name = k.slice(vm.length + 1);
    if (k.startsWith(`${vm}/`) && p.created && !recorded.has(name)) out.push([name, p]);
  }
  return out.reverse();
}

function pad(n: number): string {
  return String(n).padStart(2, '0');
}

/** The CLI's automatic name (local time, as `snapshot create` without --name makes it). */
function timestampName(now: number, taken: Set<string>): string {
  const d = new Date(now);
  const base = `snap-${d.getFullYear()}${pad(d.getMonth() + 1)}${pad(d.getDate())}-${pad(d.getHours())}${pad(d.getMinutes())}${pad(d.getSeconds())}`;
  if (!taken.has(base)) return base;
  for (let i = 2; ; i++) if (!taken.has(`${base}-${i}`)) return `${base}-${i}`;
}

function ifMatch(c: Context<Env>, current: Record<string, unknown>): void {
  const want = c.req.header('If-Match');
  if (want === undefined || want.trim() === '*') return;
  const tags = want.split(',').map((t) => t.trim());
  if (!tags.includes(String(current['@odata.etag']))) throw new RedfishError(412, [baseMessage('PreconditionFailed')]);
}

/** Starts a task and answers 202 with its monitor: no body and no Retry-After (clients break on either). */
function accepted(id: string): Response {
  return new Response(null, { status: 202, headers: { Location: monitorUri(id) } });
}

/**
 * Space a create needs: the data of the current overlays (what the snapshot seals and a merge may
 * copy), plus for a full snapshot of a libvirt domain its current memory (the memory file goes beside
 * the first disk). Both are in the task's messages.
 */
async function estimate(s: Service, vm: string, name: string, memory: boolean, t: TaskContext): Promise<void> {
  const v = await s.cb.vms.show(vm);
  let need = 0;
  let free = Number.POSITIVE_INFINITY;
  for (const d of v.disks) {
    need += (await s.cb.images.info(d.path)).data_bytes;
    free = Math.min(free, await s.freeBytes(path.dirname(d.path)));
  }
  const mem = memory && v.driver === 'libvirt' ? await s.cb.vms.memoryBytes(vm) : null;
  if (mem !== null) {
    need += mem;
    t.message(oemMessage('MemoryEstimate', [name, vm, mem]));
  }
  const estimateMsg = oemMessage('StorageEstimate', [name, vm, need, Number.isFinite(free) ? free : 0]);
  t.message(estimateMsg);
  if (need > free) throw new RedfishError(507, [baseMessage('InsufficientStorage'), estimateMsg]);
}

async function getCollection(c: Context<Env>): Promise<Response> {
  const s = c.get('service');
  const vm = systemId(c);
  const l = await listing(s, vm);
  const cacheable = !busy(s, vm);
  const hit = cacheable ? l.bodies.get('') : undefined;
  if (hit) return jsonText(hit.text);
  const recorded = new Set(l.list.map((x) => x.name));
  const members = [...creating(s, vm, recorded).map(([n]) => snapshotUri(vm, n)), ...l.list.map((x) => snapshotUri(vm, x.name))];
  const text = JSON.stringify(collection(snapshotsUri(vm), '#HawkFishSnapshotCollection.HawkFishSnapshotCollection', 'Snapshot Collection', members));
  if (cacheable) l.bodies.set('', { text, etag: null });
  return jsonText(text);
}

async function getSnapshot(c: Context<Env>): Promise<Response> {
  const s = c.get('service');
  const vm = systemId(c);
  const name = snapshotId(c);
  const l = await listing(s, vm);
  const cacheable = !busy(s, vm);
  const hit = cacheable ? l.bodies.get(name) : undefined;
  if (hit?.etag) return jsonText(hit.text, { ETag: hit.etag });
  const found = l.list.find((x) => x.name === name);
  const p = s.pending.get(pendingKey(vm, name));
  if (!found) {
    if (p?.created) return json(creatingMember(vm, name, p));
    throw notFound('HawkFishSnapshot', name, 'SNAPSHOT_NOT_FOUND');
  }
  const body = member(found, p);
  const etag = String(body['@odata.etag']);
  const text = JSON.stringify(body);
  if (cacheable) l.bodies.set(name, { text, etag });
  return jsonText(text, { ETag: etag });
}

export function snapshotRoutes(app: Hono<Env>): void {
  const coll = `/redfish/v1/Systems/:id/Oem/HawkFish/Snapshots`;
  resource(app, coll, {
    GET: (c) => {
      const kept = keptBody(c.get('service'), systemId(c), '');
      return kept ? jsonText(kept.text) : getCollection(c);
    },
    POST: async (c) => {
      need(c, 'Operator');
      const s = c.get('service');
      const vm = systemId(c);
      const body = await readObject(c, true);
      checkProps(body, { Name: 'string', Description: 'string|null', Memory: 'boolean', Quiesce: 'boolean', Tags: 'string[]' });
      if (typeof body.Name === 'string' && (!NAME_RE.test(body.Name) || body.Name === 'current')) {
        throw badRequest(baseMessage('PropertyValueFormatError', [body.Name.slice(0, 140), 'Name'], { RelatedProperties: ['#/Name'] }));
      }
      const description = typeof body.Description === 'string' ? body.Description : null;
      if (description !== null && description.length > MAX_DESCRIPTION) {
        throw badRequest(baseMessage('PropertyValueOutOfRange', [`${description.slice(0, 32)}...`, 'Description']));
      }
      const tags = (body.Tags as string[] | undefined) ?? [];
      if (tags.length > MAX_TAGS || tags.some((t) => !NAME_RE.test(t) || t.length > MAX_TAG)) {
        throw badRequest(baseMessage('PropertyValueFormatError', [JSON.stringify(tags).slice(0, 64), 'Tags']));
      }
      const v = await showVm(c, vm);
      const list = await listVm(s, vm);
      const taken = new Set([...list.map((x) => x.name), ...creating(s, vm, new Set()).map(([n]) => n)]);
      const name = typeof body.Name === 'string' ? body.Name : timestampName(s.now(), taken);
      if (taken.has(name)) throw new RedfishError(409, [baseMessage('ResourceAlreadyExists', ['HawkFishSnapshot', 'Name', name])]);
      const memory = body.Memory === true;
      const quiesce = body.Quiesce === true;
      const key = pendingKey(vm, name);
      s.pending.set(key, { state: 'Creating', created: { description, tags, time: new Date(s.now()).toISOString(), type: memory ? 'full' : 'disk' } });
      const id = s.tasks.start(
        {
          name: `Create snapshot ${name} of ${vm}`,
          method: 'POST',
          target: snapshotsUri(vm),
          body,
          queue: vm,
          ctx: { vm, snapshot: name },
          release: () => s.pending.delete(key),
        },
        async (t): Promise<FinalResponse> => {
          try {
            await estimate(s, v.name, name, memory, t);
            const made = await s.cb.snapshots.create(vm, {
              name,
              description,
              tags,
              memory,
              quiesce,
              signal: t.signal,
              onProgress: (p) => t.progress(p.total ? (p.done / p.total) * 90 : 0),
              onWarning: (w) => t.message(warningMessage(name, w.message)),
            });
            const { policy } = await s.cb.snapshots.policy(vm);
            if (policy.max_snapshots !== undefined) {
              const pruned = await s.cb.snapshots.prune(vm);
              const gone = pruned.remove.map((r) => r.name);
              if (gone.length) t.message(oemMessage('PrunedByLimit', [gone.join(', '), vm, policy.max_snapshots]));
            }
            const fresh = (await s.cb.snapshots.list(vm)).find((x) => x.name === made.name) ?? made;
            return { status: 201, body: member(fresh, undefined), headers: { Location: snapshotUri(vm, name) } };
          } finally {
            s.pending.delete(key);
          }
        },
      );
      return accepted(id);
    },
  });

  const one = `${coll}/:sid`;
  resource(app, one, {
    GET: (c) => {
      const kept = keptBody(c.get('service'), systemId(c), snapshotId(c));
      return kept?.etag ? jsonText(kept.text, { ETag: kept.etag }) : getSnapshot(c);
    },
    DELETE: async (c) => {
      need(c, 'Operator');
      const s = c.get('service');
      const vm = systemId(c);
      const name = snapshotId(c);
      const rec = c.req.query('recursive');
      if (rec !== undefined && rec !== 'true' && rec !== 'false')
        throw badRequest(baseMessage('QueryParameterValueFormatError', [rec.slice(0, 32), 'recursive']));
      const recursive = rec === 'true';
      const list = await listVm(s, vm);
      const found = list.find((x) => x.name === name);
      if (!found) throw notFound('HawkFishSnapshot', name, 'SNAPSHOT_NOT_FOUND');
      ifMatch(c, member(found, s.pending.get(pendingKey(vm, name))));
      if (s.pending.has(pendingKey(vm, name))) throw new RedfishError(409, [baseMessage('ResourceInUse')]);
      if (found.children.length > 0 && !recursive) {
        throw new RedfishError(409, [
          {
            ...baseMessage('ResourceInUse'),
            Message: `Snapshot '${name}' has children: ${found.children.join(', ')}.`,
            Resolution: `Delete the children first (${found.children.join(', ')}), or delete the whole subtree with DELETE ${snapshotUri(vm, name)}?recursive=true.`,
            Oem: { HawkFish: { Code: 'SNAPSHOT_HAS_CHILDREN' } },
          },
        ]);
      }
      const doomed = recursive ? subtreeOf(list, name) : [name];
      for (const d of doomed) s.pending.set(pendingKey(vm, d), { state: 'Deleting' });
      const id = s.tasks.start(
        {
          name: `Delete snapshot ${name} of ${vm}`,
          method: 'DELETE',
          target: snapshotUri(vm, name),
          body: null,
          queue: vm,
          ctx: { vm, snapshot: name },
          release: () => {
            for (const d of doomed) s.pending.delete(pendingKey(vm, d));
          },
        },
        async (t): Promise<FinalResponse> => {
          try {
            await s.cb.snapshots.delete(vm, name, {
              recursive,
              signal: t.signal,
              onProgress: (p) => t.progress(p.total ? (p.done / p.total) * 100 : 0),
              onWarning: (w) => t.message(warningMessage(name, w.message)),
            });
            return { status: 204, body: null, headers: {} };
          } finally {
            for (const d of doomed) s.pending.delete(pendingKey(vm, d));
          }
        },
      );
      return accepted(id);
    },
  });

  const revert = async (c: Context<Env>): Promise<Response> => {
    need(c, 'Operator');
    const s = c.get('service');
    const vm = systemId(c);
    const name = snapshotId(c);
    const body = await readObject(c, true);
    checkProps(body, {}, 'HawkFishSnapshot.Revert');
    const list = await listVm(s, vm);
    const found = list.find((x) => x.name === name);
    if (!found) throw notFound('HawkFishSnapshot', name, 'SNAPSHOT_NOT_FOUND');
    ifMatch(c, member(found, s.pending.get(pendingKey(vm, name))));
    if (s.pending.has(pendingKey(vm, name))) throw new RedfishError(409, [baseMessage('ResourceInUse')]);
    const key = pendingKey(vm, name);
    s.pending.set(key, { state: 'Reverting' });
    const id = s.tasks.start(
      {
        name: `Revert ${vm} to snapshot ${name}`,
        method: 'POST',
        target: `${snapshotUri(vm, name)}/Actions/HawkFishSnapshot.Revert`,
        body,
        queue: vm,
        ctx: { vm, snapshot: name },
        release: () => s.pending.delete(key),
      },
      async (t): Promise<FinalResponse> => {
        try {
          await s.cb.snapshots.restore(vm, {
            name,
            signal: t.signal,
            onProgress: (p) => t.progress(p.total ? (p.done / p.total) * 100 : 0),
            onWarning: (w) => t.message(warningMessage(name, w.message)),
          });
          t.message(oemMessage('SnapshotReverted', [vm, name]));
        } finally {
          s.pending.delete(key);
        }
        const fresh = (await s.cb.snapshots.list(vm)).find((x) => x.name === name);
        return { status: 200, body: fresh ? member(fresh, undefined) : null, headers: {} };
      },
    );
    return accepted(id);
  };
  resource(app, `${one}/Actions/Oem.HawkFish.Snapshot.Revert`, { POST: revert });
  resource(app, `${one}/Actions/HawkFishSnapshot.Revert`, { POST: revert });
}

function subtreeOf(list: SnapshotView[], root: string): string[] {
  const out = [root];
  for (let i = 0; i < out.length; i++) {
    const s = list.find((x) => x.name === out[i]);
    for (const ch of s?.children ?? []) out.push(ch);
  }
  return out;
}
