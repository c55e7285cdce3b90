/**
 * Systems: one ComputerSystem per registered VM, with its snapshot collection linked under
 * `Oem.HawkFish.Snapshots` and its snapshot limit (the retention policy's max_snapshots) under
 * `Oem.HawkFish.SnapshotLimit`, which an Administrator changes with PATCH.
 */
import type { Context, Hono } from 'hono';
import { NAME_RE, type PowerState, type VmView } from '../../index.js';
import type { Env } from '../context.js';
import { badRequest, fromLibraryError, notFound } from '../errors.js';
import { checkProps, collection, json, need, readObject, resource } from '../http.js';
import { baseMessage } from '../messages.js';
import { SYSTEMS, snapshotsUri, systemUri } from '../uris.js';

/** The VM of a `:id` path parameter: 404 for a name that cannot be one (`..`, slashes, too long). */
export function systemId(c: Context<Env>): string {
  const id = c.req.param('id') ?? '';
  if (!NAME_RE.test(id)) throw notFound('ComputerSystem', id.slice(0, 140), 'VM_NOT_FOUND');
  return id;
}

export async function showVm(c: Context<Env>, vm: string): Promise<VmView> {
  try {
    return await c.get('service').cb.vms.show(vm);
  } catch (err) {
    throw fromLibraryError(err, { vm });
  }
}

/** Redfish's PowerState for a libvirt domain's state; none when libvirt does not answer. */
const POWER: Record<PowerState, string | null> = {
  running: 'On',
  idle: 'On',
  'in shutdown': 'PoweringOff',
  paused: 'Paused',
  pmsuspended: 'Paused',
  'shut off': 'Off',
  crashed: 'Off',
  unknown: null,
};

async function powerState(c: Context<Env>, v: VmView): Promise<{ PowerState?: string }> {
  if (v.driver !== 'libvirt') return {};
  const state = await c
    .get('service')
    .cb.vms.powerState(v.name)
    .catch(() => null);
  const p = state ? POWER[state] : null;
  return p ? { PowerState: p } : {};
}

async function systemView(c: Context<Env>, v: VmView): Promise<Record<string, unknown>> {
  const { cb } = c.get('service');
  const { policy } = await cb.snapshots.policy(v.name);
  return {
    '@odata.type': '#ComputerSystem.v1_20_0.ComputerSystem',
    '@odata.id': systemUri(v.name),
    Id: v.name,
    Name: v.name,
    Description: `clonebox VM (${v.driver} driver)`,
    SystemType: 'Virtual',
    ...(await powerState(c, v)),
    Status: { State: 'Enabled', Health: 'OK' },
    Boot: { BootSourceOverrideEnabled: 'Disabled', BootSourceOverrideTarget: 'None' },
    Actions: {},
    Oem: {
      HawkFish: {
        '@odata.type': '#HawkFishComputerSystem.v1_0_0.HawkFishComputerSystem',
        Snapshots: { '@odata.id': snapshotsUri(v.name) },
        SnapshotCount: v.snapshot_count,
        CurrentSnapshot: v.current,
        SnapshotLimit: policy.max_snapshots ?? null,
        Driver: v.driver,
        Disks: v.disks.map((d) => ({ Target: d.target, VirtualSizeBytes: d.virtual_size })),
      },
    },
  };
}

export function systemRoutes(app: Hono<Env>): void {
  resource(app, SYSTEMS, {
    GET: async (c) => {
      const vms = await c.get('service').cb.vms.list();
      return json(
        collection(
          SYSTEMS,
          '#ComputerSystemCollection.ComputerSystemCollection',
          'Computer System Collection',
          vms.map((v) => systemUri(v.name)),
        ),
      );
    },
  });
  resource(app, `${SYSTEMS}/:id`, {
    GET: async (c) => json(await systemView(c, await showVm(c, systemId(c)))),
    PATCH: async (c) => {
      need(c, 'Administrator');
      const vm = systemId(c);
      await showVm(c, vm);
      const body = await readObject(c);
      checkProps(body, { Oem: 'object' });
      const oem = (body.Oem ?? {}) as Record<string, unknown>;
      checkProps(oem, { HawkFish: 'object' }, undefined, 'Oem/');
      const hf = (oem.HawkFish ?? {}) as Record<string, unknown>;
      checkProps(hf, { SnapshotLimit: 'integer' }, undefined, 'Oem/HawkFish/');
      const limit = hf.SnapshotLimit;
      if (typeof limit === 'number') {
        if (limit < 1 || limit > 100_000) throw badRequest(baseMessage('PropertyValueOutOfRange', [limit, 'Oem/HawkFish/SnapshotLimit']));
        try {
          await c.get('service').cb.snapshots.policy(vm, { max_snapshots: limit });
        } catch (err) {
          throw fromLibraryError(err, { vm });
        }
      }
      return json(await systemView(c, await showVm(c, vm)));
    },
  });
}
