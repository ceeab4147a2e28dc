#!/usr/bin/env python3
"""Verify authbase's X-User-Assertion with PyJWT (pip install 'PyJWT[crypto]').

    python3 verify_assertion.py JWKS_URL ISSUER AUDIENCE TOKEN

prints the claims as JSON and exits 0, or prints why not and exits 1. In an app, call
`verify(token, jwks_url, issuer, audience)` with the X-User-Assertion header and the host
the request was for, once per request; the JWKS is fetched once and cached (refetched for a new key id).
"""
import json
import sys

import jwt  # PyJWT

_clients = {}


def verify(token: str, jwks_url: str, issuer: str, audience: str) -> dict:
    """The claims of a valid assertion for `audience`; raises jwt.PyJWTError otherwise."""
    client = _clients.get(jwks_url)
    if client is None:
        client = _clients[jwks_url] = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300)
    key = client.get_signing_key_from_jwt(token)  # by the token's kid
    return jwt.decode(
        token,
        key.key,
        algorithms=["EdDSA"],  # never let the token choose
        issuer=issuer,
        audience=audience,  # this app's host: a token for another app is refused
        options={"require": ["iss", "aud", "sub", "iat", "exp"]},  # exp is checked
        leeway=5,  # seconds of clock skew
    )


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    jwks_url, issuer, audience, token = sys.argv[1:]
    try:
        print(json.dumps(verify(token, jwks_url, issuer, audience)))
    except jwt.PyJWTError as e:
        said = ""
        # For a wrong aud or iss, what the token says (unverified), to see the mistake.
        claim = {jwt.InvalidAudienceError: "aud", jwt.InvalidIssuerError: "iss"}.get(type(e))
        if claim:
            unverified = jwt.decode(token, options={"verify_signature": False})
            said = f" (the token says {claim} {json.dumps(unverified.get(claim))})"
        print(f"rejected: {type(e).__name__}: {e}{said}", file=sys.stderr)
        sys.exit(1)
