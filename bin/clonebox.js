#!/usr/bin/env node
// Thin launcher: the compiled CLI lives in dist/ (built by `npm install` through the prepare script).
import { statSync } from 'node:fs';
import v8 from 'node:v8';

// Optimise only code that stays hot (a larger interrupt budget than V8's default before TurboFan), in
// this isolate and the worker threads alike: a clonebox command runs for seconds, and compiling every
// lukewarm function of the main thread and each worker cost a noticeable share of the CPU of an export
// or import (figures: bench/README.md, "Figures behind the code"); the hot loops still get optimised.
if (!process.env.CLONEBOX_V8_DEFAULTS) v8.setFlagsFromString('--interrupt-budget=540000');

// The bundled CLI (scripts/bundle-cli.mjs) starts faster; it is used unless it is missing or older
// than tsc's output (a `tsc` run without the bundle step must not leave a stale CLI running).
function entry() {
  const mtime = (rel) => statSync(new URL(rel, import.meta.url), { throwIfNoEntry: false })?.mtimeMs ?? -1;
  return mtime('../dist/bundle/main.js') >= mtime('../dist/cli/main.js') ? '../dist/bundle/main.js' : '../dist/cli/main.js';
}

import(entry())
  .then((m) => m.main(process.argv))
  .catch((err) => {
    process.stderr.write(`clonebox: error: ${err?.message ?? err}\n`);
    process.exitCode = 1;
  });
