/**
 * Group bundles: `snapshot export --group` and `snapshot import --group` (docs/bundle-format.md,
 * "Group bundles"; docs/groups.md). A group bundle is a version 2 bundle holding every member's chain
 * up to one group snapshot, with one block numbering for all chains, so blocks the members share (VMs
 * cloned from one base) are stored once. The chains are written and read by export.ts and import.ts;
 * this module picks them from the group's records and lands the group's records on import.
 *
 * Lock order, as every group command: the group's lock first, then the members' VM locks by name.
 */
import { nowIso } from '../clock.js';
import { driverStepHandlers } from '../drivers/registry.js';
import { CloneboxError } from '../errors.js';
import { pathExists } from '../fsutil.js';
import {
  checkGroupName,
  type GroupRecord,
  type GroupSnapshotRecord,
  groupFile,
  groupJournalPath,
  groupSnapshotFile,
  listGroupSnapshotRecords,
  loadGroup,
  lockGroup,
} from '../store/groups.js';
import type { Home } from '../store/home.js';
import { type Action, recoverGroup } from '../store/journal.js';
import type { Lock } from '../store/lock.js';
import { type ExportOptions, type ExportResult, exportChains } from './export.js';
import type { MetaGroup, MetaGroupSnapshot } from './format.js';
import { type GroupImportResult, type ImportOptions, importGroupChains } from './import.js';

function newestFirst(a: GroupSnapshotRecord, b: GroupSnapshotRecord): number {
  return a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : a.name < b.name ? 1 : -1;
}

/**
 * Exports group `group`'s members, each up to its member snapshot of group snapshot `opts.name`
 * (default: the newest ready one). The bundle carries the group snapshots up to that one whose members
 * are the same VMs (a group snapshot taken before a member was added or removed names other VMs, and
 * its member snapshots would not all be in the bundle).
 */
export async function exportGroupBundle(home: Home, group: string, opts: ExportOptions): Promise<ExportResult> {
  checkGroupName(group);
  if (opts.since !== undefined) throw CloneboxError.USAGE('--since is not supported with --group', { hint: 'a group bundle holds whole chains' });
  const rec = await loadGroup(home, group);
  let glock: Lock | null = await lockGroup(home, group, 'snapshot export --group');
  try {
    if (await pathExists(groupJournalPath(home, group))) {
      // Recovering it needs every member's lock (store/journal.ts); the group commands take them.
      throw CloneboxError.VM_BUSY(`group ${group} has an interrupted operation`, {
        hint: `run \`clonebox snapshot list --group ${group}\` to finish it, then export again`,
      });
    }
    const all = (await listGroupSnapshotRecords(home, group)).filter((s) => s.state === 'ready').sort(newestFirst);
    const at = opts.name === undefined ? all[0] : all.find((s) => s.name === opts.name);
    if (!at) {
      if (opts.name === undefined) {
        throw new CloneboxError('NO_SNAPSHOTS', `group ${group} has no group snapshot to export`, {
          hint: `create one with \`clonebox snapshot create --group ${group}\``,
        });
      }
      throw new CloneboxError('SNAPSHOT_NOT_FOUND', `no such group snapshot ${opts.name}, group ${group}`, {
        hint: `see \`clonebox snapshot list --group ${group}\``,
      });
    }
    const vms = at.members.map((m) => m.vm).sort();
    const key = vms.join(',');
    const carried = all
      .filter(
        (s) =>
          s.created_at <= at.created_at &&
          s.members
            .map((m) => m.vm)
            .sort()
            .join(',') === key,
      )
      .sort((a, b) => -newestFirst(a, b));
    const meta: MetaGroup = {
      name: group,
      description: rec.description ?? null,
      members: vms,
      snapshots: carried.map(
        (s): MetaGroupSnapshot => ({
          name: s.name,
          created_at: s.created_at,
          description: s.description,
          tags: [...s.tags],
          type: s.type,
          consistency: s.consistency,
          pause_ms: s.pause_ms,
          auto_created: s.auto_created,
          auto_policy: s.auto_policy,
          members: Object.fromEntries(s.members.map((m) => [m.vm, m.snapshot])),
        }),
      ),
    };
    return await exportChains(
      home,
      at.members.map((m) => ({ vm: m.vm, name: m.snapshot })),
      meta,
      { ...opts, name: undefined },
      {
        // The chains are pinned: a group snapshot deleted meanwhile waits for the export to end, and
        // the group lock need not be held for its whole length.
        pinned: async () => {
          await glock?.release();
          glock = null;
        },
        // An older group snapshot carried must still stand on the chains: a member snapshot of it that
        // is not in its VM's chain (a VM restored and snapshotted on another line) makes it unexportable.
        check: (chains) => {
          for (const g of meta.snapshots) {
            for (const [vm, snap] of Object.entries(g.members)) {
              if (!chains.get(vm)?.includes(snap)) {
                throw new CloneboxError('UNSUPPORTED', `group snapshot ${g.name} names ${vm}'s snapshot ${snap}, which is not on the line to ${at.name}`, {
                  hint: `export an older group snapshot with --name, or delete ${g.name}`,
                });
              }
            }
          }
        },
      },
    );
  } finally {
    await glock?.release();
  }
}

/**
 * Imports a group bundle as group `group` (by default the bundle's own group name): every member VM
 * under its own name (none may exist), the group record and its group snapshots, or nothing.
 */
export async function importGroupBundle(home: Home, group: string, opts: ImportOptions): Promise<GroupImportResult> {
  checkGroupName(group);
  const glock = await lockGroup(home, group, 'snapshot import --group');
  try {
    return await importGroupChains(opts, home, {
      name: group,
      check: async () => {
        // An import of this group killed earlier: its journal (and members' redirects) go first.
        await recoverGroup(home, group, driverStepHandlers);
        if (await pathExists(groupFile(home, group))) {
          throw CloneboxError.GROUP_EXISTS(`group ${group} already exists`, {
            hint: 'import under another group name (--group NAME), or delete the group and its VMs first',
          });
        }
      },
      actions: (meta) => {
        const g = meta.group!;
        const members = meta.chains.map((c) => c.vm).sort();
        const out: Action[] = [];
        for (const s of g.snapshots) {
          const r: GroupSnapshotRecord = {
            format: 1,
            name: s.name,
            group,
            state: 'ready',
            created_at: s.created_at,
            description: s.description,
            tags: s.tags,
            type: s.type,
            members: members.map((vm) => ({ vm, snapshot: s.members[vm]! })),
            consistency: s.consistency,
            pause_ms: s.pause_ms,
            auto_created: s.auto_created,
            auto_policy: s.auto_policy,
          };
          out.push({ do: 'write_json', path: groupSnapshotFile(home, group, s.name), value: r });
        }
        const rec: GroupRecord = { format: 1, name: group, created_at: nowIso(), description: g.description, members };
        out.push({ do: 'write_json', path: groupFile(home, group), value: rec });
        return out;
      },
    });
  } finally {
    await glock.release();
  }
}
