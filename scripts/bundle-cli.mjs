#!/usr/bin/env node
// Bundles the compiled CLI (dist/cli/main.js and everything it imports from dist/src) into
// dist/bundle/, which bin/clonebox.js loads when it exists.
//
// Why: a command's start-up is dominated by loading modules, not by its work. Node 20's ESM loader
// resolves, reads and compiles every file separately, so `snapshot list` paid for ~45 files and for
// commander's eager `require('node:child_process')` (which pulls in net, dgram and the stream
// internals) before doing anything (figures: bench/README.md). Here each command loads a handful of
// chunks: code-splitting keeps every lazy `import()` of the library lazy (compression, crypto,
// networking stay out of `snapshot list`), and the packages stay external so native addons and their
// own lazy loading are untouched. commander is the one package inlined, with child_process deferred
// to first use (clonebox never runs commander's executable subcommands, so it is never used).
//
// The library (dist/src, the package's `exports`) is not bundled: consumers import it as tsc built it.
// The worker thread's script is an entry point too, so `new URL('./worker.js', import.meta.url)` from
// a chunk finds a bundled worker beside it.
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
const external = Object.keys(pkg.dependencies).filter((d) => d !== 'commander');
const outdir = path.join(root, 'dist', 'bundle');

/** commander's child_process, loaded on first property access instead of at start-up. */
const deferChildProcess = {
  name: 'defer-child-process',
  setup(b) {
    b.onResolve({ filter: /^(node:)?child_process$/ }, (args) =>
      args.importer.includes(`${path.sep}commander${path.sep}`) ? { path: 'child_process', namespace: 'deferred' } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'deferred' }, () => ({
      contents: "let m; module.exports = new Proxy({}, { get: (_, k) => (m ??= require('node:child_process'))[k] });",
      loader: 'js',
    }));
  },
};

rmSync(outdir, { recursive: true, force: true });
await build({
  absWorkingDir: root,
  entryPoints: { main: 'dist/cli/main.js', worker: 'dist/src/content/worker.js' },
  outdir,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  chunkNames: 'chunk-[hash]',
  external,
  plugins: [deferChildProcess],
  // commander is CommonJS: its require() of node built-ins needs a real require in an ES module.
  banner: { js: "import { createRequire as __cloneboxRequire } from 'node:module'; const require = __cloneboxRequire(import.meta.url);" },
  sourcemap: 'linked',
  logLevel: 'warning',
});
