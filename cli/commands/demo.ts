import { type Command, Option } from 'commander';
import { printJson, printLine } from '../output.js';
import { action } from '../run.js';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('run the whole story on a generated disk (nothing else needed)')
    .addOption(new Option('--dir <dir>', 'working directory').default(undefined, 'a new temporary directory'))
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, o: { dir?: string }) => {
        const r = await ctx.cb.demo.run({ ...(o.dir ? { dir: o.dir } : {}), ...(ctx.json ? {} : { onLog: printLine }) });
        if (ctx.json) return printJson(r);
        printLine('');
        printLine(`demo finished in ${r.seconds} s; everything is in ${r.dir}`);
        printLine(`try: clonebox --home ${r.home} snapshot list ${r.vm} --tree`);
        printLine(`its files stay in ${r.dir} until you remove them: rm -rf ${r.dir}`);
      }),
    );
}
