//! `GET /.well-known/jwks.json`: the public keys that verify `X-User-Assertion` (the
//! active key and retired keys still within their overlap; see `signing`).

use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::StatusCode;

use crate::signing::JWKS_MAX_AGE;
use crate::store::now;
use crate::web::{self, Ctx, Resp};

pub fn jwks(ctx: &Ctx) -> Resp {
    let mut r = web::json(StatusCode::OK, ctx.app.signing.current().jwks(now()));
    // Public and cacheable: a rotated-out key stays published for `signing::OVERLAP`,
    // far longer than this, so a cached copy always holds every key still in use. A
    // verifier that meets an unknown `kid` (a key newer than its copy) refetches.
    r.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={JWKS_MAX_AGE}"))
            .expect("a valid header value"),
    );
    r
}
