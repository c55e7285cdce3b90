/** What every command action gets: the open library and the output mode, from global and per-command flags. */
import type { Clonebox } from '../src/index.js';

export interface GlobalOpts {
  home?: string;
  json?: boolean;
  quiet?: boolean;
  verbose?: boolean;
}

export interface Ctx {
  cb: Clonebox;
  json: boolean;
}
