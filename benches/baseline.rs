//! The yardstick for `scripts/bench`: the smallest hyper 1.x server that answers every
//! request `200` with two headers, on the same runtime settings as authbase.
//! Run: `cargo run --release --example baseline -- 127.0.0.1:9100`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;

fn main() {
    // The same request threads as authbase with `server.workers` unset.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(authbase::config::default_workers())
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(serve());
}

async fn serve() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9100".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    eprintln!(
        "baseline listening on http://{}",
        listener.local_addr().unwrap()
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(|_req| async {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("x-user-id", "1")
                        .header("x-user-email", "user@example.com")
                        .body(Full::new(Bytes::new()))
                        .expect("static response"),
                )
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
