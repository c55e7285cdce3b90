/**
 * `clonebox/serve`: the Redfish snapshot service (docs/serve.md) and its client, a second public entry
 * beside src/index.ts. It sits above the library and uses only its public API. Nothing here is loaded
 * by the CLI until a `serve`, `user` or `remote` command runs.
 */
export { type AccountView, addAccount, changePassword, listAccounts, ROLES, type Role, removeAccount } from './accounts.js';
export { createRedfishApp, type RedfishApp } from './app.js';
export { RemoteClient, type RemoteOptions } from './client.js';
export { type RunningService, type ServeOptions, startService } from './server.js';
