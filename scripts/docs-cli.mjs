#!/usr/bin/env node
// Writes docs/cli.md from the command definitions of the built CLI (`npm run docs:cli` builds first).
import { writeFile } from 'node:fs/promises';
import { buildProgram } from '../dist/cli/main.js';
import { renderCliReference } from '../dist/cli/reference.js';

await writeFile(new URL('../docs/cli.md', import.meta.url), renderCliReference(buildProgram()));
