// Verify authbase's X-User-Assertion with `jose` (npm install jose).
//
//     node verify-assertion.mjs JWKS_URL ISSUER AUDIENCE TOKEN
//
// prints the claims as JSON and exits 0, or prints why not and exits 1. In an app, call
// `verify(token, jwksUrl, issuer, audience)` with the X-User-Assertion header and the
// host the request was for; createRemoteJWKSet caches the keys and refetches for an unknown key id.
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createRemoteJWKSet, decodeJwt, jwtVerify } from 'jose';

const sets = new Map();

export async function verify(token, jwksUrl, issuer, audience) {
  let keys = sets.get(jwksUrl);
  if (!keys) {
    keys = createRemoteJWKSet(new URL(jwksUrl), { cacheMaxAge: 300_000 });
    sets.set(jwksUrl, keys);
  }
  const { payload } = await jwtVerify(token, keys, {
    algorithms: ['EdDSA'], // never let the token choose
    issuer,
    audience, // this app's host: a token for another app is refused
    requiredClaims: ['sub', 'iat', 'exp'], // exp is checked
    clockTolerance: 5, // seconds
  });
  return payload;
}

// Run as a command (not imported): compared as real paths, so a symlink or a space in
// the path still runs it.
const isMain = (() => {
  try {
    return realpathSync(fileURLToPath(import.meta.url)) === realpathSync(process.argv[1]);
  } catch {
    return false;
  }
})();

if (isMain) {
  if (process.argv.length !== 6) {
    console.error('usage: node verify-assertion.mjs JWKS_URL ISSUER AUDIENCE TOKEN');
    process.exit(2);
  }
  const [jwksUrl, issuer, audience, token] = process.argv.slice(2);
  try {
    console.log(JSON.stringify(await verify(token, jwksUrl, issuer, audience)));
  } catch (e) {
    console.error(`rejected: ${e.code ?? e.name}: ${e.message}${claimed(e, token)}`);
    process.exit(1);
  }
}

// For a wrong aud or iss, what the token says (unverified), to see the mistake.
function claimed(e, token) {
  if (e.code !== 'ERR_JWT_CLAIM_VALIDATION_FAILED' || !['aud', 'iss'].includes(e.claim)) {
    return '';
  }
  try {
    return ` (the token says ${e.claim} ${JSON.stringify(decodeJwt(token)[e.claim])})`;
  } catch {
    return '';
  }
}
