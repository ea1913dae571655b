// Real OpenID providers (panva's oidc-provider) for the interop suite, shaped like Keycloak's,
// Okta's, Auth0's and Azure AD's: each issues client-credentials JWT access tokens (RFC 9068)
// with its claims, audience, issuer form and signing algorithm. One HTTP server per provider on
// 127.0.0.1, port 0; the first line on stdout is a JSON object describing them all.
//
// Commands on stdin, one per line, each answered by one line on stdout (`ok ...` or `error ...`):
//   rotate NAME     a new signing key, published first; the old one still published
//   retire NAME     the old key no longer published (after `rotate`)
//   down NAME       every request answered 503 (an outage)
//   up NAME         answered again
// Run from the folder its package (oidc-provider) is installed in: interop/providers_test.py
// copies it to .interop-cache/oidc/ beside node_modules.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as readline from 'node:readline';

import Provider from 'oidc-provider';

// stdout is the command channel: oidc-provider's notices and warnings go to stderr.
for (const level of ['log', 'info', 'warn', 'debug']) {
  console[level] = (...args) => process.stderr.write(`${args.join(' ')}\n`);
}

const SECRET = 'interop-secret';

// What each provider's access tokens look like. `path` is the issuer's path: a trailing slash is
// part of the issuer (Auth0, Azure AD v1).
const SHAPES = {
  keycloak: {
    path: '/realms/acme',
    client: 'gitlab-instance-kc',
    // Keycloak's audience is a client's name, not a URI: the resource indicator names it.
    resource: 'urn:dws',
    audience: 'dws',
    scope: 'dws:run dws:chat',
    key: { kty: 'RSA', alg: 'RS256' },
    extra: (clientId) => ({ azp: clientId, typ: 'Bearer' }),
  },
  okta: {
    path: '/oauth2/default',
    client: '0oa-gitlab-instance',
    audience: 'api://default',
    scope: 'duo_agent_platform duo_chat',
    key: { kty: 'RSA', alg: 'PS256' },
    extra: (clientId, scope) => ({ cid: clientId, scp: (scope || '').split(' ').filter(Boolean) }),
  },
  auth0: {
    path: '/',
    client: 'Xy1GitlabInstance',
    audience: 'https://dws.example.com',
    scope: 'duo_agent_platform duo_chat',
    key: { kty: 'EC', crv: 'P-384', alg: 'ES384' },
    extra: (clientId) => ({ azp: clientId }),
  },
  azure: {
    path: '/8e3a-tenant/',
    client: '7d1c-gitlab-app',
    audience: 'api://dws',
    scope: '',
    // Azure AD publishes its keys without `alg`.
    key: { kty: 'RSA', alg: 'RS256', publishAlg: false },
    extra: (clientId) => ({ appid: clientId, roles: ['DWS.Run'], ver: '1.0' }),
  },
};

let serial = 0;

/** A private JWK of the shape's kind, with a kid. */
function newKey(spec) {
  serial += 1;
  const pair = spec.kty === 'RSA'
    ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
    : crypto.generateKeyPairSync('ec', { namedCurve: spec.crv });
  const jwk = pair.privateKey.export({ format: 'jwk' });
  jwk.kid = `${spec.alg.toLowerCase()}-${serial}-${crypto.randomBytes(4).toString('hex')}`;
  jwk.use = 'sig';
  if (spec.publishAlg !== false) jwk.alg = spec.alg;
  return jwk;
}

/** An oidc-provider for `shape` at `issuer`, signing access tokens with `keys[0]`. */
function provider(shape, issuer, keys) {
  const p = new Provider(issuer, {
    clients: [{
      client_id: shape.client,
      client_secret: SECRET,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      scope: shape.scope || undefined,
    }],
    jwks: { keys },
    scopes: shape.scope.split(' ').filter(Boolean),
    // Access tokens and ID tokens sign with the shape's algorithm: its only key's.
    enabledJWA: { idTokenSigningAlgValues: [shape.key.alg] },
    clientDefaults: { id_token_signed_response_alg: shape.key.alg },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => shape.resource || shape.audience,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          audience: shape.audience,
          scope: shape.scope,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: shape.key.alg, kid: keys[0].kid } },
        }),
      },
    },
    extraTokenClaims: (_ctx, token) => shape.extra(token.clientId, token.scope),
    ttl: { ClientCredentials: 600 },
  });
  return p;
}

const running = {};

async function start(name, shape) {
  const state = { down: false, handler: null };
  const server = http.createServer((req, res) => {
    if (state.down) {
      res.writeHead(503, { 'content-type': 'text/plain' });
      res.end('outage');
      return;
    }
    state.handler(req, res);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}${shape.path}`;
  const keys = [newKey(shape.key)];
  const mount = shape.path.replace(/\/$/, '');
  const install = () => {
    const p = provider(shape, issuer, keys);
    const callback = p.callback();
    // Mounted under the issuer's path: oidc-provider reads the mount path from originalUrl.
    state.handler = (req, res) => {
      if (!req.url.startsWith(`${mount}/`)) {
        res.writeHead(404);
        res.end();
        return;
      }
      req.originalUrl = req.url;
      req.url = req.url.slice(mount.length) || '/';
      callback(req, res);
    };
  };
  install();
  running[name] = { server, state, shape, issuer, keys, install };
  return {
    issuer,
    token_endpoint: `http://127.0.0.1:${port}${mount}/token`,
    client_id: shape.client,
    client_secret: SECRET,
    resource: shape.resource || shape.audience,
    audience: shape.audience,
    scope: shape.scope,
    alg: shape.key.alg,
    kid: keys[0].kid,
  };
}

function command(line) {
  const [verb, name] = line.trim().split(/\s+/);
  const p = running[name];
  if (!p) return `error no provider ${name}`;
  switch (verb) {
    case 'rotate':
      p.keys.unshift(newKey(p.shape.key));
      p.install();
      return `ok ${p.keys[0].kid}`;
    case 'retire':
      if (p.keys.length < 2) return 'error nothing to retire';
      p.keys.splice(1);
      p.install();
      return `ok ${p.keys[0].kid}`;
    case 'down':
      p.state.down = true;
      return 'ok';
    case 'up':
      p.state.down = false;
      return 'ok';
    default:
      return `error unknown command ${verb}`;
  }
}

const described = {};
for (const [name, shape] of Object.entries(SHAPES)) {
  described[name] = await start(name, shape);
}
process.stdout.write(`${JSON.stringify(described)}\n`);

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => process.stdout.write(`${command(line)}\n`));
// The suite closing stdin (or going away) ends the providers.
lines.on('close', () => process.exit(0));
