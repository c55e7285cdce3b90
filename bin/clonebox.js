#!/usr/bin/env node
// Thin launcher: the compiled CLI lives in dist/ (built by `npm install` through the prepare script).
import v8 from 'node:v8';

// Optimise only code that stays hot (8x V8's default budget before TurboFan), in this isolate and the
// worker threads alike: a clonebox command runs for seconds, and compiling every lukewarm function of
// the main thread and each worker cost ~10-15% of the CPU of an export or import (measured with
// perf: TurboFan was 11% of an import's samples); the hot loops still get optimised.
if (!process.env.CLONEBOX_V8_DEFAULTS) v8.setFlagsFromString('--interrupt-budget=540000');

import('../dist/cli/main.js').then((m) => m.main(process.argv)).catch((err) => {
  process.stderr.write(`clonebox: error: ${err?.message ?? err}\n`);
  process.exitCode = 1;
});
