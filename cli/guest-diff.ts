/**
 * Human rendering of `snapshot diff --files|--packages|--etc`: per disk and partition, files grouped
 * by kind with a `git diff --stat`-like count and size, package changes, /etc unified diffs.
 */
import { type DiffResult, formatBytes, type GuestFileChange, type GuestPartitionDiff } from '../src/index.js';

const KIND_ORDER = ['added', 'removed', 'renamed', 'modified', 'metadata'] as const;
const MARK = { added: '+', removed: '-', modified: 'M', metadata: 'm', renamed: 'R' } as const;

function size(n: number | null): string {
  return n === null ? '-' : formatBytes(n);
}

function describe(c: GuestFileChange): string {
  const t = c.type === 'file' ? '' : ` (${c.type_before ? `${c.type_before} -> ` : ''}${c.type})`;
  const links = c.links ? ` [hard link, ${c.links} names]` : '';
  let detail = '';
  if (c.entries !== undefined) detail = `  ${c.entries} entries, ${formatBytes(c.bytes ?? 0)}`;
  else if (c.change === 'added') detail = `  ${size(c.size_after)}`;
  else if (c.change === 'removed') detail = `  ${size(c.size_before)}`;
  else if (c.size_before !== c.size_after) detail = `  ${size(c.size_before)} -> ${size(c.size_after)}`;
  const extra: string[] = [];
  if (c.mode_before) extra.push(`mode ${c.mode_before} -> ${c.mode_after}`);
  if (c.owner_before) extra.push(`owner ${c.owner_before} -> ${c.owner_after}`);
  if (c.target_before !== undefined && c.target_after !== undefined) extra.push(`target ${c.target_before} -> ${c.target_after}`);
  else if (c.target_after !== undefined) extra.push(`-> ${c.target_after}`);
  const name = c.path_before !== undefined ? `${c.path_before} -> ${c.path}` : c.path;
  return `  ${MARK[c.change]} ${name}${t}${links}${detail}${extra.length ? `  (${extra.join(', ')})` : ''}`;
}

function partitionTitle(p: GuestPartitionDiff): string {
  const where = p.index === 0 ? 'whole disk' : `partition ${p.index}`;
  return `${where} (${p.filesystem}, ${formatBytes(p.size)})`;
}

export function renderGuestDiff(d: DiffResult): string[] {
  const out: string[] = [];
  for (const disk of d.disks) {
    out.push(`${disk.target}: ${formatBytes(disk.changed_bytes)} of the disk changed`);
    const g = disk.guest;
    if (!g) continue;
    for (const w of g.warnings) out.push(`  warning: ${w}`);
    for (const p of g.partitions) {
      if (p.status === 'unchanged') {
        out.push(`${partitionTitle(p)}: unchanged`);
        continue;
      }
      if (p.status !== 'compared') {
        out.push(`${partitionTitle(p)}: ${p.message ?? p.status}`);
        continue;
      }
      const s = p.summary;
      out.push(
        `${partitionTitle(p)}${s ? `: ${s.added} added, ${s.removed} removed, ${s.renamed ? `${s.renamed} renamed, ` : ''}${s.modified} modified, ${s.metadata} metadata only (+${formatBytes(s.bytes_added)} -${formatBytes(s.bytes_removed)})` : ''}`,
      );
      for (const w of p.warnings) out.push(`  warning: ${w}`);
      if (p.files) {
        for (const kind of KIND_ORDER) {
          const list = p.files.filter((c) => c.change === kind);
          if (list.length === 0) continue;
          out.push(` ${kind} (${list.length}):`);
          for (const c of list) out.push(describe(c));
        }
      }
      for (const db of p.packages ?? []) {
        out.push(` packages (${db.manager}, ${db.path}): ${db.changes.length} change(s)`);
        for (const c of db.changes) {
          const v = c.change === 'installed' ? c.to : c.change === 'removed' ? c.from : `${c.from} -> ${c.to}`;
          out.push(`  ${c.change.padEnd(10)} ${c.name} ${v}`);
        }
      }
      if (p.etc) {
        out.push(` /etc: ${p.etc.length} change(s)`);
        for (const c of p.etc) {
          out.push(describe(c));
          if (c.binary) out.push('    (binary file)');
          else if (c.too_large) out.push('    (above --max-diff-bytes or too different: no diff shown)');
          else if (c.diff) for (const l of c.diff.trimEnd().split('\n')) out.push(`    ${l}`);
        }
      }
    }
  }
  return out;
}
