#!/usr/bin/env bash
# The package as a stranger gets it: packs this repository, installs the tarball (and TypeScript) into
# a new project in a temporary directory outside the repository, type-checks a consumer under
# --strict (and the example of docs/api.md), runs it (a VM, two snapshots, an export, an import into a
# second home) and checks every imported snapshot against its original with `qemu-img compare`.
# Exits non-zero on any failure. Needs node, npm (with a reachable registry), qemu-img and qemu-io.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/clonebox-consumer-XXXXXX")"
case "$work/" in "$repo"/*) echo "consumer-check: temporary directory $work is inside the repository" >&2; exit 1 ;; esac
keep="${CLONEBOX_CONSUMER_KEEP:-}"
cleanup() { if [ -z "$keep" ]; then rm -rf "$work"; else echo "consumer-check: left $work" >&2; fi; }
trap cleanup EXIT
step() { printf 'consumer-check: %s\n' "$*" >&2; }

# The consumer uses the TypeScript and @types/node versions the repository is built with.
devdep() { node -e "process.stdout.write(require(process.argv[1]).devDependencies[process.argv[2]])" "$repo/package.json" "$1"; }
ts_version="$(devdep typescript)"
node_types="$(devdep @types/node)"

step "packing $repo"
tarball="$(cd "$repo" && npm pack --silent --pack-destination "$work" | tail -n 1)"
tarball="$work/$tarball"
[ -f "$tarball" ] || { echo "consumer-check: npm pack made no tarball" >&2; exit 1; }

app="$work/app"
mkdir -p "$app/src"
cd "$app"
cat > package.json <<'JSON'
{ "name": "clonebox-consumer", "version": "1.0.0", "private": true, "type": "module" }
JSON
step "installing $(basename "$tarball"), typescript@$ts_version, @types/node@$node_types"
npm install --no-audit --no-fund --loglevel=error "$tarball" "typescript@$ts_version" "@types/node@$node_types" >&2

cat > tsconfig.json <<'JSON'
{
  "compilerOptions": {
    "target": "ES2022", "module": "NodeNext", "moduleResolution": "NodeNext", "strict": true,
    "outDir": "out", "rootDir": "src", "types": ["node"]
  },
  "include": ["src/**/*.ts"]
}
JSON

cat > src/consumer.ts <<'TS'
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { Clonebox, CloneboxError, type ExportResult, type ImportResult, type SnapshotView } from 'clonebox';

const [dir, result] = process.argv.slice(2) as [string, string];
const a = await Clonebox.open({ home: path.join(dir, 'home-a') });
const b = await Clonebox.open({ home: path.join(dir, 'home-b') });
try {
  const vm = await a.vms.create('web', { size: '64M', dir: path.join(dir, 'disks-a') });
  const disk = vm.disks[0]!.path;
  execFileSync('qemu-io', ['-c', 'write -P 0x11 0 3M', '-c', 'write -z 8M 1M', disk]);
  const first: SnapshotView = await a.snapshots.create('web', { name: 'one', description: 'first', tags: ['t'] });
  execFileSync('qemu-io', ['-c', 'write -P 0x22 1M 2M', '-c', 'write -P 0x33 32M 64k', disk]);
  await a.snapshots.create('web', { name: 'two' });
  const listed: SnapshotView[] = await a.snapshots.list('web');
  if (listed.length !== 2 || first.parent !== null) throw new Error(`unexpected list: ${JSON.stringify(listed)}`);
  let reports = 0;
  const out: ExportResult = await a.bundles.export('web', {
    output: path.join(dir, 'web.cbx'),
    onProgress: (p) => {
      reports += p.done >= 0 ? 1 : 0;
    },
  });
  const imported: ImportResult = await b.bundles.import('web', path.join(dir, 'web.cbx'), { dir: path.join(dir, 'disks-b') });
  if (imported.snapshots.join() !== out.snapshots.join() || reports === 0) throw new Error(`export ${JSON.stringify(out)}, import ${JSON.stringify(imported)}`);
  const code = await b.vms.show('nope').then(() => null, (e: unknown) => (e instanceof CloneboxError ? e.code : 'not a CloneboxError'));
  if (code !== 'VM_NOT_FOUND') throw new Error(`vms.show of a missing VM gave ${code}`);
  const theirs = new Map((await b.snapshots.list('web')).map((s) => [s.name, s.disks]));
  const pairs = listed.flatMap((s) => s.disks.map((d) => [d.path, theirs.get(s.name)?.find((x) => x.target === d.target)?.path ?? '']));
  writeFileSync(result, pairs.map((p) => p.join('\t')).join('\n') + '\n');
} finally {
  await a.close();
  await b.close();
}
TS

# The documentation's example, type-checked and run against the package as well.
awk '/<!-- example:start -->/{f=1; next} /<!-- example:end -->/{f=0} f' "$repo/docs/api.md" | sed '/^```/d' > src/doc-example.ts
[ -s src/doc-example.ts ] || { echo "consumer-check: docs/api.md has no example" >&2; exit 1; }

step "type-checking under --strict"
npx tsc -p tsconfig.json --noEmit >&2
npx tsc -p tsconfig.json >&2

step "running the consumer"
node out/consumer.js "$work" "$work/pairs.tsv" >&2
n=0
while IFS=$'\t' read -r mine theirs; do
  [ -n "$theirs" ] || { echo "consumer-check: a snapshot layer of $mine was not imported" >&2; exit 1; }
  qemu-img compare -q "$mine" "$theirs" || { echo "consumer-check: $theirs differs from $mine" >&2; exit 1; }
  n=$((n + 1))
done < "$work/pairs.tsv"
[ "$n" -ge 2 ] || { echo "consumer-check: only $n snapshot layer(s) compared" >&2; exit 1; }
step "the $n imported snapshot layers are identical under qemu-img compare"

step "running the example of docs/api.md"
node out/doc-example.js >&2
step "ok"
