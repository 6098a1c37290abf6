// A real OpenID provider for the portal's tests: the certified `oidc-provider` package
// (installed by scripts/ensure-oidc-provider.sh, outside the repository) with its
// development login page, one public client that must use PKCE, and accounts that are
// whatever login name is typed (the `sub` claim; `name` is the same).
//
// Usage: node oidc_provider.mjs PROVIDER_DIR PORT CLIENT_ID REDIRECT_URI
// (PROVIDER_DIR: where the script installed it). Prints "listening <issuer>" once it
// accepts connections.
import { webcrypto } from "node:crypto";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

// Node.js 18 (Debian 12's) has the Web Crypto API that jose, under oidc-provider, calls
// as the global `crypto` only behind a flag; later versions always have it.
if (!globalThis.crypto) globalThis.crypto = webcrypto;

const [dir, port, clientId, redirectUri] = process.argv.slice(2);
const entry = join(dir, "node_modules", "oidc-provider", "lib", "index.js");
const { default: Provider } = await import(pathToFileURL(entry).href);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      redirect_uris: [redirectUri],
      response_types: ["code"],
      grant_types: ["authorization_code"],
      token_endpoint_auth_method: "none",
    },
  ],
  pkce: { required: () => true },
  // As Entra ID does, the ID token itself carries the profile claims asked for.
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true } },
  claims: { openid: ["sub"], profile: ["name"] },
  async findAccount(_ctx, id) {
    return { accountId: id, claims: async () => ({ sub: id, name: id }) };
  },
});
// The development key and cookie keys of oidc-provider are fine for a test provider.
provider.proxy = false;
const server = provider.listen(Number(port), "127.0.0.1", () => {
  console.log(`listening ${issuer}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
