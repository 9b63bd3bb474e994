//! The REST API over TLS: served to clients that trust its certificate, over
//! HTTP/2 and HTTP/1.1, with handshakes that cannot hold each other up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod harness;

use std::time::Duration;

use airlock_proto::transport::ServerTls;
use harness::Harness;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A control plane whose REST API serves a self-signed certificate for
/// `127.0.0.1` and `localhost`; the certificate's PEM is the CA to trust.
async fn start() -> (Harness, String) {
    let pair = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let dir = tempfile_dir();
    let files = ServerTls { cert_file: dir.join("api.crt"), key_file: dir.join("api.key") };
    std::fs::write(&files.cert_file, pair.cert.pem()).unwrap();
    std::fs::write(&files.key_file, pair.signing_key.serialize_pem()).unwrap();
    let h = Harness::start_tls(files, &pair.cert.pem()).await;
    std::fs::remove_dir_all(&dir).unwrap();
    (h, pair.cert.pem())
}

/// `n` connections to the REST API that never begin a handshake.
async fn stall(h: &Harness, n: usize) -> Vec<tokio::net::TcpStream> {
    let addr = h.base.trim_start_matches("https://");
    let mut stalled = Vec::with_capacity(n);
    for _ in 0..n {
        stalled.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    stalled
}

#[tokio::test]
async fn the_rest_api_and_console_are_served_over_tls() {
    let (h, ca) = start().await;
    assert!(h.base.starts_with("https://127.0.0.1:"), "{}", h.base);
    assert!(h.running.api_tls);

    // The API, with the admin token, over HTTP/2 (what ALPN picks) and HTTP/1.1.
    h.register_example_connection(&h.admin_token).await;
    let response = h.client.get(format!("{}/v1/connections", h.base)).bearer_auth(&h.admin_token).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert!(response.text().await.unwrap().contains("pg-local"));
    let http1 = harness::trusting(&ca).http1_only().build().unwrap();
    let response = http1.get(format!("{}/v1/connections", h.base)).bearer_auth(&h.admin_token).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert!(response.text().await.unwrap().contains("pg-local"));
    // The web console beside it.
    let page = h.client.get(format!("{}/", h.base)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("<title>Airlock</title>"), "{page}");

    // A client that does not trust the certificate gets no answer.
    let stranger = reqwest::Client::builder().tls_built_in_root_certs(false).build().unwrap();
    let err = stranger.get(format!("{}/healthz", h.base)).send().await.unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

    // Cleartext HTTP to the TLS port is not served: the connection ends
    // without an HTTP answer, and the server goes on serving.
    let addr = h.base.trim_start_matches("https://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /v1/connections HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut answer)).await.unwrap();
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1"), "{answer:?}");
    let (status, _) = h.get("/v1/connections", &h.admin_token).await;
    assert_eq!(status, StatusCode::OK);
}

/// Clients that connect and never finish a handshake do not hold up one
/// that does: each handshake runs on its own.
#[tokio::test]
async fn a_stalled_handshake_holds_up_no_one() {
    let (h, _) = start().await;
    let stalled = stall(&h, 8).await;
    // Their handshakes take up to 10 s each before they are dropped: answered
    // well before eight of them could have run one after another.
    let request = h.client.get(format!("{}/healthz", h.base)).timeout(Duration::from_secs(8)).send();
    let response = request.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // They are still connected: the answer did not wait for them to go.
    for tcp in &stalled {
        let mut byte = [0u8; 1];
        assert!(tcp.try_read(&mut byte).is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock));
    }
}

/// One address cannot take every handshake: beyond its share its
/// connections are closed at once, while a client at another address is
/// served.
#[tokio::test]
async fn one_address_cannot_take_every_handshake() {
    let (h, ca) = start().await;
    let addr = h.base.trim_start_matches("https://").to_owned();
    let stalled = stall(&h, 32).await;
    // The next one from 127.0.0.1 is closed without waiting for a handshake.
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut byte)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // From 127.0.0.2 (loopback too) the API answers meanwhile.
    let elsewhere = harness::trusting(&ca)
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(8))
        .build()
        .unwrap();
    let response = elsewhere.get(format!("{}/healthz", h.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(stalled);
}

/// A renewed certificate written over the APIs' files is served from the next
/// handshake on, without a restart, by the REST API and the gRPC API alike: a
/// new client verifies it against the new root and no longer against the old
/// one, while a connection made before the renewal goes on being served.
#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let names = || vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let first = rcgen::generate_simple_self_signed(names()).unwrap();
    let dir = tempfile_dir();
    let files = ServerTls { cert_file: dir.join("api.crt"), key_file: dir.join("api.key") };
    std::fs::write(&files.cert_file, first.cert.pem()).unwrap();
    std::fs::write(&files.key_file, first.signing_key.serialize_pem()).unwrap();
    let h = Harness::start_tls(files.clone(), &first.cert.pem()).await;
    let healthz = format!("{}/healthz", h.base);
    // A client of its own per handshake: reqwest would reuse a connection.
    let fresh = |ca: String| {
        let healthz = healthz.clone();
        async move { harness::trusting(&ca).pool_max_idle_per_host(0).build().unwrap().get(healthz).send().await }
    };
    assert_eq!(fresh(first.cert.pem()).await.unwrap().status(), StatusCode::OK);
    // A connection opened before the renewal, kept by the harness's client
    // (were it closed, a new one would fail to verify the renewed certificate).
    assert_eq!(h.client.get(&healthz).send().await.unwrap().status(), StatusCode::OK);
    // The gRPC API, as a worker calls it, trusting a CA file.
    let grpc_trusting = |pem: String, name: &str| {
        let ca = dir.join(name);
        std::fs::write(&ca, pem).unwrap();
        let url = format!("https://{}", h.running.grpc_addr);
        let tls = airlock_proto::transport::ClientTls { ca_file: Some(ca), ..Default::default() };
        let endpoint = airlock_proto::transport::endpoint("the gRPC API", &url, &tls).unwrap();
        async move {
            let channel = endpoint.connect().await?;
            let mut worker = airlock_proto::v1::worker_service_client::WorkerServiceClient::new(channel);
            let mut request = tonic::Request::new(airlock_proto::v1::SnapshotRequest {});
            request.metadata_mut().insert("authorization", "Bearer worker-secret".parse().unwrap());
            Ok::<_, Box<dyn std::error::Error>>(worker.snapshot(request).await?.into_inner().tenants.len())
        }
    };
    assert_eq!(grpc_trusting(first.cert.pem(), "first.pem").await.unwrap(), 1);

    let renewed = rcgen::generate_simple_self_signed(names()).unwrap();
    std::fs::write(&files.cert_file, renewed.cert.pem()).unwrap();
    std::fs::write(&files.key_file, renewed.signing_key.serialize_pem()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fresh(renewed.cert.pem()).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the renewed certificate was not served within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (Both are self-signed by the same name: the old root is found as the
    // issuer, and its signature does not match.)
    let err = format!("{:?}", fresh(first.cert.pem()).await.unwrap_err());
    assert!(
        err.contains("BadSignature") || err.contains("UnknownIssuer"),
        "the old certificate is still served: {err}"
    );
    assert_eq!(h.client.get(&healthz).send().await.unwrap().status(), StatusCode::OK);
    // Its own reloader, which may have read the files between the two writes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while grpc_trusting(renewed.cert.pem(), "renewed.pem").await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the gRPC API did not serve the renewal within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = format!("{:?}", grpc_trusting(first.cert.pem(), "first.pem").await.unwrap_err());
    assert!(
        err.contains("BadSignature") || err.contains("UnknownIssuer"),
        "the gRPC API still serves the old certificate: {err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("airlock-https-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
