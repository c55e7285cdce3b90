/**
 * The layering of src/ (docs/architecture.md, "The rooms"), checked by `npm run lint:deps`.
 *
 * src/ is a stack of rooms. A module may import its own room and any room BELOW it, never one above:
 *
 *   cli/                           parsing and rendering
 *   src/serve/                     the Redfish service and its client (public entry src/serve/index.ts)
 *   src/index.ts, src/api/         the public library entry
 *   src/demo/                      the demo story (drives the whole library)
 *   src/archive/                   the archive repository (built from bundle's packs, frames and keys)
 *   src/bundle/  src/sync/         bundle files and team sync: siblings, neither imports the other
 *   src/snapshots/  src/vms.ts     snapshot and VM operations, the chain-landing module
 *   src/drivers/                   where a VM's disks are and how they are sealed into layers
 *   src/content/                   content addressing (block cuts, layer digest, dedup index), the zstd
 *                                  codec and the worker pool
 *   src/guest/                     the guest-aware diff: partitions, ext2/3/4, packages, /etc
 *   src/qcow2/  src/store/         the image format and the home's records; siblings
 *   base                           src/errors.ts, src/names.ts, src/fsutil.ts, src/zstd.ts,
 *                                  src/abort.ts, src/clock.ts, src/crash.ts: import nothing of ours but each other
 *
 * The rule set is generated from LAYERS below: one `layer-<name>` rule per room, forbidding every room
 * that sits above it (and, for siblings, each other). Type-only imports count (tsPreCompilationDeps),
 * because a type that crosses upwards is as much a dependency as a value.
 *
 * Private modules: a file whose name starts with `_` (src/<room>/_x.ts) is internal to its room; only
 * files of the same room may import it (rule `no-room-internals`).
 */

/** Bottom first. Each entry: a name and the path pattern of its modules (relative to the repo root). */
const LAYERS = [
  { name: 'base', path: '^src/(errors|names|fsutil|zstd|abort|clock|crash)\\.ts$' },
  { name: 'qcow2', path: '^src/qcow2/', siblings: ['store'] },
  { name: 'store', path: '^src/store/', siblings: ['qcow2'] },
  { name: 'guest', path: '^src/guest/' },
  { name: 'content', path: '^src/content/' },
  { name: 'drivers', path: '^src/drivers/' },
  { name: 'snapshots', path: '^src/(snapshots/|vms\\.ts$)' },
  { name: 'bundle', path: '^src/bundle/', siblings: ['sync'] },
  { name: 'sync', path: '^src/sync/', siblings: ['bundle'] },
  { name: 'archive', path: '^src/archive/' },
  { name: 'demo', path: '^src/demo/' },
  { name: 'api', path: '^src/(api/|index\\.ts$)' },
  { name: 'serve', path: '^src/serve/' },
  { name: 'cli', path: '^cli/' },
];

const byName = new Map(LAYERS.map((l) => [l.name, l]));

function layerRules() {
  return LAYERS.flatMap((layer, i) => {
    const above = LAYERS.slice(i + 1).map((l) => l.path);
    const siblings = (layer.siblings ?? []).map((s) => byName.get(s).path);
    const forbidden = [...above, ...siblings];
    // (an empty path list would match every module, so the top room gets no rule)
    if (forbidden.length === 0) return [];
    return {
      name: `layer-${layer.name}`,
      comment: `${layer.name} imports only rooms below it (docs/architecture.md, "The rooms")`,
      severity: 'error',
      from: { path: layer.path },
      to: { path: forbidden },
    };
  });
}

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'an import cycle makes load order matter and rooms inseparable',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    ...layerRules(),
    {
      name: 'cli-only-public-entry',
      comment: 'cli/ is a client of the library: from src/ it imports the public entries only (src/index.ts, src/serve/index.ts)',
      severity: 'error',
      from: { path: '^cli/' },
      to: { path: '^src/', pathNot: '^src/(index|serve/index)\\.ts$' },
    },
    {
      name: 'serve-only-public-entry',
      comment: 'the REST service is a client of the library: from src/ outside its room it imports the public entry only',
      severity: 'error',
      from: { path: '^src/serve/' },
      to: { path: '^src/', pathNot: '^src/(index\\.ts$|serve/)' },
    },
    {
      name: 'no-room-internals',
      comment: 'src/<room>/_<name>.ts is private to its room',
      severity: 'error',
      from: { path: '^src/([^/]+)/' },
      to: { path: '^src/([^/]+)/_[^/]+\\.ts$', pathNot: '^src/$1/' },
    },
    {
      name: 'no-orphans',
      comment: 'a module nothing imports is dead code or a forgotten entry point',
      severity: 'warn',
      from: {
        orphan: true,
        path: '^src/',
        // the worker-thread entry is loaded by file path, not imported; index.ts is the package entry
        pathNot: ['^src/index\\.ts$', '^src/content/worker\\.ts$', '\\.d\\.ts$'],
      },
      to: {},
    },
    {
      name: 'not-to-unresolvable',
      comment: 'an import that resolves to nothing is a typo or a missing dependency',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    // TypeScript 7 has no JS API for dependency-cruiser to parse with; swc reads the sources instead.
    parser: 'swc',
    tsPreCompilationDeps: true,
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|node_modules)/' },
    // ESM sources import './x.js' for './x.ts' (moduleResolution NodeNext): the resolver maps those itself.
    enhancedResolveOptions: {
      extensions: ['.ts', '.js', '.d.ts'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
    },
    reporterOptions: { text: { highlightFocused: true } },
  },
};
