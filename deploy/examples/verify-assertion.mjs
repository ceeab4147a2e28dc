// Verify authbase's X-User-Assertion with `jose` (npm install jose).
//
//     node verify-assertion.mjs JWKS_URL ISSUER AUDIENCE TOKEN
//
// prints the claims as JSON and exits 0, or prints why not and exits 1. In an app, call
// `verify(token, jwksUrl, issuer, audience)` with the X-User-Assertion header and the
// host the request was for; createRemoteJWKSet caches the keys and refetches for an unknown key id.
import { createRemoteJWKSet, jwtVerify } from 'jose';

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

if (import.meta.url === `file://${process.argv[1]}`) {
  const [jwksUrl, issuer, audience, token] = process.argv.slice(2);
  if (!token) {
    console.error('usage: node verify-assertion.mjs JWKS_URL ISSUER AUDIENCE TOKEN');
    process.exit(2);
  }
  try {
    console.log(JSON.stringify(await verify(token, jwksUrl, issuer, audience)));
  } catch (e) {
    console.error(`rejected: ${e.code ?? e.name}: ${e.message}`);
    process.exit(1);
  }
}
