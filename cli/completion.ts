/**
 * Shell completion from the command definitions. The scripts for bash, zsh and fish are small and
 * alike: each hands the words typed so far to the hidden `clonebox __complete -- WORDS...`, which walks
 * the same commander tree that parses real command lines (so completion cannot drift from it) and
 * prints one candidate per line. VM, snapshot and team names come from the home through the library;
 * a line `:files` or `:dirs` asks the shell for its own file or directory completion.
 *
 * What a value completes to is read from the definitions: an argument named `<vm>` is a VM, an option
 * value named `<snapshot>` a snapshot of the command's VM, `<team>` a team, `<file>`/`<dir>` a path.
 */
import type { Argument, Command, Option } from 'commander';
import type { Clonebox } from '../src/index.js';
import { fullName } from './help.js';

/** Commands whose `<vm>` argument names a VM that does not exist yet: nothing to offer. */
const NEW_VM = new Set(['clonebox vm create', 'clonebox vm add', 'clonebox snapshot import']);

/** What the word under the cursor stands for. */
type Want =
  | { kind: 'words'; words: string[] }
  | { kind: 'vm' }
  | { kind: 'snapshot'; vm: string | undefined; extra: string[] }
  | { kind: 'team' }
  | { kind: 'files' }
  | { kind: 'dirs' }
  | { kind: 'none' };

/** The value placeholder of an option, e.g. `snapshot` for `--name <snapshot>`. */
function valueName(o: Option): string | null {
  return /[<[]([^>\]]+)[>\]]/.exec(o.flags)?.[1]?.replace(/\.\.\.$/, '') ?? null;
}

function takesValue(o: Option): boolean {
  return o.required || o.optional;
}

/** The options visible in `cmd`: its own and its ancestors' (global options such as --home). */
function optionsOf(cmd: Command): Option[] {
  const out: Option[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) out.push(...c.options.filter((o) => !o.hidden));
  return out;
}

function findOption(cmd: Command, word: string): Option | undefined {
  return optionsOf(cmd).find((o) => o.long === word || o.short === word);
}

function byName(name: string, vm: string | undefined, choices: readonly string[] | undefined): Want {
  if (choices) return { kind: 'words', words: [...choices] };
  switch (name) {
    case 'vm':
      return { kind: 'vm' };
    case 'snapshot':
      return { kind: 'snapshot', vm, extra: [] };
    case 'team':
      return { kind: 'team' };
    case 'file':
      return { kind: 'files' };
    case 'dir':
      return { kind: 'dirs' };
    default:
      return { kind: 'none' };
  }
}

/** Works out, from the command tree alone, what the last word (`cur`, maybe empty) should complete to. */
function analyse(program: Command, words: string[]): { want: Want; cur: string; home: string | undefined } {
  const cur = words[words.length - 1] ?? '';
  const done = words.slice(0, -1);
  let cmd = program;
  const positionals: string[] = [];
  let home: string | undefined;
  let pending: Option | null = null;
  for (let i = 0; i < done.length; i++) {
    const w = done[i]!;
    if (pending) {
      if (pending.long === '--home') home = w;
      pending = null;
      continue;
    }
    if (w === '--') return { want: { kind: 'files' }, cur, home };
    if (w.startsWith('-') && w.length > 1) {
      const [flag, inline] = w.split(/=(.*)/s, 2) as [string, string | undefined];
      const o = findOption(cmd, flag);
      if (o && takesValue(o)) {
        if (inline === undefined) pending = o;
        else if (o.long === '--home') home = inline;
      }
      continue;
    }
    const sub = cmd.commands.find((c) => c.name() === w || c.aliases().includes(w));
    if (sub && positionals.length === 0) cmd = sub;
    else positionals.push(w);
  }
  const vm = cmd.registeredArguments.findIndex((a) => a.name() === 'vm');
  const vmName = vm >= 0 ? positionals[vm] : undefined;
  if (pending) {
    const want = byName(valueName(pending) ?? '', vmName, pending.argChoices);
    // `snapshot diff --to` also takes the word current (the current state).
    if (want.kind === 'snapshot' && pending.long === '--to') want.extra.push('current');
    return { want, cur, home };
  }
  if (cur.startsWith('-')) {
    const flags = optionsOf(cmd).flatMap((o) => (o.long ? [o.long] : []));
    return { want: { kind: 'words', words: [...flags, '--help'] }, cur, home };
  }
  if (cmd.commands.length > 0 && positionals.length === 0) {
    return { want: { kind: 'words', words: cmd.commands.filter((c) => !(c as Command & { _hidden?: boolean })._hidden).map((c) => c.name()) }, cur, home };
  }
  const arg: Argument | undefined = cmd.registeredArguments[positionals.length] ?? cmd.registeredArguments.find((a) => a.variadic);
  if (!arg) return { want: { kind: 'none' }, cur, home };
  if (arg.name() === 'vm' && NEW_VM.has(fullName(cmd))) return { want: { kind: 'none' }, cur, home };
  if (arg.variadic && arg.name() === 'command') return { want: { kind: 'files' }, cur, home };
  return { want: byName(arg.name(), vmName, arg.argChoices), cur, home };
}

/** The candidates for `words` (the last is the word being completed), one per line as the scripts read them. */
export async function complete(program: Command, words: string[], open: (home: string | undefined) => Promise<Clonebox>): Promise<string[]> {
  const { want, cur, home } = analyse(program, words);
  const starting = (xs: string[]) => xs.filter((x) => x.startsWith(cur));
  switch (want.kind) {
    case 'words':
      return starting(want.words);
    case 'files':
      return [':files'];
    case 'dirs':
      return [':dirs'];
    case 'none':
      return [];
  }
  // Names from the home: a completion must never fail loudly nor change anything (no recovery).
  let cb: Clonebox | null = null;
  try {
    cb = await open(home);
    if (want.kind === 'vm') return starting((await cb.vms.list()).map((v) => v.name));
    if (want.kind === 'team') return starting(await cb.teams.list());
    if (want.vm === undefined) return starting(want.extra);
    return starting([...(await cb.snapshots.list(want.vm)).map((s) => s.name), ...want.extra]);
  } catch {
    return [];
  } finally {
    await cb?.close();
  }
}

/** The completion script for a shell: it calls `clonebox __complete -- WORDS...` at each Tab. */
export function completionScript(shell: 'bash' | 'zsh' | 'fish'): string {
  switch (shell) {
    case 'bash':
      return `# clonebox completion for bash. Load it with:  source <(clonebox completion bash)
# or install it:  clonebox completion bash > ~/.local/share/bash-completion/completions/clonebox
_clonebox() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" line out
  local IFS=$'\\n'
  COMPREPLY=()
  out=$(clonebox __complete -- "\${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null) || return 0
  for line in $out; do
    case "$line" in
      :files) COMPREPLY+=($(compgen -f -- "$cur")); compopt -o filenames 2>/dev/null ;;
      :dirs) COMPREPLY+=($(compgen -d -- "$cur")); compopt -o filenames 2>/dev/null ;;
      *) COMPREPLY+=("$line") ;;
    esac
  done
}
complete -F _clonebox clonebox
`;
    case 'zsh':
      return `#compdef clonebox
# clonebox completion for zsh. Load it with:  source <(clonebox completion zsh)   (after compinit)
# or install it as _clonebox in a directory of $fpath.
_clonebox() {
  local -a out cands
  local line
  out=("\${(@f)$(clonebox __complete -- "\${(@)words[2,CURRENT]}" 2>/dev/null)}")
  for line in "\${out[@]}"; do
    case "$line" in
      :files) _files ;;
      :dirs) _files -/ ;;
      '') ;;
      *) cands+=("$line") ;;
    esac
  done
  (( \${#cands} )) && compadd -- "\${cands[@]}"
  return 0
}
if [ "$funcstack[1]" = "_clonebox" ]; then _clonebox "$@"; else compdef _clonebox clonebox; fi
`;
    case 'fish':
      return `# clonebox completion for fish. Load it with:  clonebox completion fish | source
# or install it:  clonebox completion fish > ~/.config/fish/completions/clonebox.fish
function __clonebox_complete
    set -l words (commandline -opc) (commandline -ct)
    clonebox __complete -- $words[2..-1] 2>/dev/null | while read -l line
        switch $line
            case ':files'
                __fish_complete_path (commandline -ct)
            case ':dirs'
                __fish_complete_directories (commandline -ct)
            case '*'
                echo $line
        end
    end
end
complete -c clonebox -f -a '(__clonebox_complete)'
`;
  }
}
