/** What every command action gets: the home and output mode, from global and per-command flags. */
import { resolveHome, type Home } from '../src/store/home.js';

export interface GlobalOpts {
  home?: string;
  json?: boolean;
}

export interface Ctx {
  home: Home;
  json: boolean;
}

export function makeCtx(opts: GlobalOpts): Ctx {
  return { home: resolveHome(opts.home), json: Boolean(opts.json) };
}
