//! TLS and the bearer token, end to end, with certificates generated for
//! each test: producers publish over TLS and the records are stored, a
//! plaintext or untrusting client is refused with a clear error, mutual TLS
//! turns away clients without a trusted certificate, the Ingest service
//! answers UNAUTHENTICATED to a missing or wrong token while health and
//! reflection stay open (every other data route: `auth.rs`; idle sockets
//! and handshakes: `limits.rs`). The last tests run the same through the real
//! Envoy's TLS listener.

use std::{path::Path, process::Stdio, time::Duration};

use tokio::process::Command;
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tributary::{
    channel::{ClientTlsArgs, Link},
    proto::{
        PublishBatchRequest, PullRequest, Record, Subscription, Text, ingest_client::IngestClient,
        record::Payload,
    },
    testkit::certs::TestCerts,
};

use crate::{
    cluster::{self, Backends, Cluster, envoy_file},
    support::{BIN, Mesh, send, send_command, tool, wait_stored},
};

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// `tributary up` serving TLS with `certs`, plus `extra` flags.
async fn tls_mesh(data: &Path, certs: &TestCerts, extra: &[&str]) -> Mesh {
    let mut args = vec![
        "--tls-cert",
        path(&certs.server_cert),
        "--tls-key",
        path(&certs.server_key),
        "--tls-ca",
        path(&certs.ca),
    ];
    args.extend_from_slice(extra);
    Mesh::start_bare(data, "127.0.0.1:0", &args).await
}

/// A channel to `url` trusting the test CA, presenting the client
/// certificate when `client_cert`.
async fn tls_channel(url: &str, certs: &TestCerts, client_cert: bool) -> Channel {
    let args = ClientTlsArgs {
        tls_ca: Some(certs.ca.clone()),
        tls_client_cert: client_cert.then(|| certs.client_cert.clone()),
        tls_client_key: client_cert.then(|| certs.client_key.clone()),
    };
    Link::new(url, args.load().expect("the test certificates load"), None)
        .endpoint()
        .expect("the URL is valid")
        .connect()
        .await
        .expect("the TLS server accepts a trusting client")
}

/// `tributary health ARGS…`: (success, stdout, stderr).
async fn health(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN)
        .arg("health")
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("tributary health runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_producer_publishes_over_tls_and_the_records_are_stored() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path());
    // The mesh's own parsers pull over the same TLS listener.
    let mesh = tls_mesh(data.path(), &certs, &[]).await;
    let url = format!("https://localhost:{}", mesh.addr.port());

    let summary = send(
        &url,
        &["--tls-ca", path(&certs.ca), "--kind", "text", "-n", "2000"],
    )
    .await;
    assert_eq!(summary["acked"], 2000, "{summary}");
    let channel = tls_channel(&url, &certs, false).await;
    wait_stored(&channel, "raw", 2000, Duration::from_secs(60)).await;

    // The certificate also names 127.0.0.1, and health speaks TLS too.
    let ip_url = format!("https://127.0.0.1:{}", mesh.addr.port());
    let (ok, out, err) = health(&["--connect", &ip_url, "--tls-ca", path(&certs.ca)]).await;
    assert!(
        ok && out.trim() == "SERVING",
        "health over TLS: {out} {err}"
    );
}

#[tokio::test]
async fn a_client_that_does_not_speak_or_trust_the_servers_tls_fails_clearly() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path());
    let mesh = tls_mesh(data.path(), &certs, &[]).await;
    let port = mesh.addr.port();

    // Plaintext HTTP/2 against a TLS listener: the handshake never starts.
    let (ok, _, err) = health(&["--connect", &format!("http://127.0.0.1:{port}")]).await;
    assert!(!ok, "a plaintext client must not get an answer");
    assert!(
        err.contains("127.0.0.1"),
        "the error names the server: {err}"
    );

    // TLS, but without the test CA: the system roots do not trust it.
    let (ok, _, err) = health(&["--connect", &format!("https://localhost:{port}")]).await;
    assert!(!ok, "an untrusted certificate must be refused");
    assert!(
        err.to_lowercase().contains("certificate"),
        "the error says the certificate is the problem: {err}"
    );

    // TLS files with a plaintext address is a mistake, reported before
    // anything is sent.
    let output = send_command(
        &format!("http://127.0.0.1:{port}"),
        &["--tls-ca", path(&certs.ca), "-n", "1"],
    )
    .output()
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains("https://"), "{err}");

    // The server goes on serving trusting clients after the failed ones.
    let (ok, out, err) = health(&[
        "--connect",
        &format!("https://localhost:{port}"),
        "--tls-ca",
        path(&certs.ca),
    ])
    .await;
    assert!(ok, "{out} {err}");
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_trusted_certificate() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path());
    let mesh = tls_mesh(
        data.path(),
        &certs,
        &[
            "--tls-client-ca",
            path(&certs.ca),
            "--tls-client-cert",
            path(&certs.client_cert),
            "--tls-client-key",
            path(&certs.client_key),
        ],
    )
    .await;
    let url = format!("https://localhost:{}", mesh.addr.port());
    let ca = path(&certs.ca);

    let (ok, out, err) = health(&["--connect", &url, "--tls-ca", ca]).await;
    assert!(!ok, "no client certificate must be refused: {out}");
    assert!(!err.is_empty());
    let (ok, out, _) = health(&[
        "--connect",
        &url,
        "--tls-ca",
        ca,
        "--tls-client-cert",
        path(&certs.stranger_cert),
        "--tls-client-key",
        path(&certs.stranger_key),
    ])
    .await;
    assert!(!ok, "a certificate from another CA must be refused: {out}");

    let client = [
        "--tls-ca",
        ca,
        "--tls-client-cert",
        path(&certs.client_cert),
        "--tls-client-key",
        path(&certs.client_key),
    ];
    let mut args = vec!["--connect", url.as_str()];
    args.extend_from_slice(&client);
    let (ok, out, err) = health(&args).await;
    assert!(ok && out.trim() == "SERVING", "{out} {err}");

    // Producers and the mesh's own parsers both pass with their certificates.
    let mut args = client.to_vec();
    args.extend_from_slice(&["--kind", "text", "-n", "500"]);
    let summary = send(&url, &args).await;
    assert_eq!(summary["acked"], 500, "{summary}");
    let channel = tls_channel(&url, &certs, true).await;
    wait_stored(&channel, "raw", 500, Duration::from_secs(60)).await;
}

fn text_record(source: &str, seq: u64) -> Record {
    Record {
        source: source.into(),
        seq,
        sent_at: Some(tributary::clock::now_timestamp()),
        attributes: Default::default(),
        payload: Some(Payload::Text(Text {
            body: format!("line {seq}"),
        })),
    }
}

/// PublishBatch of one record with `authorization` set to `header`.
async fn publish_with(channel: &Channel, header: Option<&str>) -> Result<(), tonic::Status> {
    let mut request = Request::new(PublishBatchRequest {
        records: vec![text_record("auth-test", 0)],
    });
    if let Some(header) = header {
        request
            .metadata_mut()
            .insert("authorization", header.parse().unwrap());
    }
    IngestClient::new(channel.clone())
        .publish_batch(request)
        .await
        .map(drop)
}

#[tokio::test]
async fn the_ingest_service_wants_the_token_and_health_and_reflection_stay_open() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "correct-horse-battery\n").unwrap();
    let mesh = Mesh::start_bare(
        data.path(),
        "127.0.0.1:0",
        &["--auth-token-file", path(&token_file)],
    )
    .await;
    let channel = mesh.channel().await;

    let none = publish_with(&channel, None).await.unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    let wrong = publish_with(&channel, Some("Bearer correct-horse-battery-staple"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    assert!(
        !wrong.message().contains("correct-horse"),
        "the answer never echoes a token: {wrong:?}"
    );
    publish_with(&channel, Some("Bearer correct-horse-battery"))
        .await
        .expect("the right token is accepted");

    // Pull is guarded as well: its acks remove records from the queue.
    let subscribe = PullRequest {
        subscribe: Some(Subscription {
            parser: "intruder".into(),
            max_outstanding: 10,
            ..Default::default()
        }),
        ..Default::default()
    };
    let pull = IngestClient::new(channel.clone())
        .pull(tokio_stream::iter(vec![subscribe]))
        .await
        .unwrap_err();
    assert_eq!(pull.code(), Code::Unauthenticated, "{pull:?}");

    // Health and reflection answer without a token, for load balancers and
    // grpcurl.
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "tributary.v1.Ingest".into(),
        })
        .await
        .expect("health needs no token")
        .into_inner();
    assert_eq!(status.status, 1, "SERVING");
    let listed = Command::new(tool("TRIBUTARY_GRPCURL"))
        .args(["-plaintext", &mesh.addr.to_string(), "list"])
        .output()
        .await
        .expect("grpcurl runs");
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("tributary.v1.Ingest"));

    // A producer with the token gets its records stored by the mesh's own
    // parsers, which present the same token to Pull.
    let mut producer = send_command(&mesh.url(), &["--kind", "text", "-n", "1000"]);
    producer.env("TRIBUTARY_AUTH_TOKEN_FILE", &token_file);
    let output = producer.output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["acked"], 1000, "{summary}");
    // Query takes the token too.
    crate::auth::wait_stored_with(
        &channel,
        "correct-horse-battery",
        "raw",
        1001,
        Duration::from_secs(60),
    )
    .await;

    // A producer without it is told why.
    let output = send_command(&mesh.url(), &["-n", "1", "--retry-secs", "1"])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains("bearer token"), "{err}");

    // REST publishes take the same token: the access layer sees every
    // request of the port, REST included.
    let rest = reqwest::Client::builder().http1_only().build().unwrap();
    let url = format!("http://{}/v1/records", mesh.addr);
    let body = serde_json::json!({"records": [{"source": "rest-token", "seq": "1", "text": {"body": "hi"}}]});
    let post = |auth: Option<&'static str>| {
        let mut request = rest.post(&url).json(&body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    for auth in [None, Some("Bearer correct-horse-battery-staple")] {
        let refused = post(auth).await.unwrap();
        assert_eq!(
            refused.status(),
            reqwest::StatusCode::UNAUTHORIZED,
            "{auth:?}"
        );
        let error: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(error["code"], 16, "UNAUTHENTICATED: {error}");
    }
    let accepted = post(Some("Bearer correct-horse-battery")).await.unwrap();
    assert_eq!(accepted.status(), reqwest::StatusCode::OK);
    let answer: serde_json::Value = accepted.json().await.unwrap();
    assert_eq!(answer["accepted"], 1, "{answer}");
}

#[test]
fn envoy_tls_yaml_is_envoy_yaml_plus_the_tls_listener() {
    let plain = envoy_file("envoy.yaml");
    let mut tls = envoy_file("envoy-tls.yaml");
    let listeners = tls["static_resources"]["listeners"]
        .as_sequence_mut()
        .unwrap();
    let at = listeners
        .iter()
        .position(|l| l["name"].as_str() == Some("entry_tls"))
        .expect("envoy-tls.yaml has the entry_tls listener");
    let tls_listener = listeners.remove(at);
    assert_eq!(
        tls, plain,
        "envoy-tls.yaml must be envoy.yaml plus entry_tls: port envoy.yaml's changes to it"
    );
    assert_eq!(
        tls_listener["filter_chains"][0]["filters"],
        plain["static_resources"]["listeners"][0]["filter_chains"][0]["filters"],
        "entry_tls serves the same routes as entry"
    );
}

/// The compose topology with TLS terminated at Envoy: a producer outside
/// publishes over TLS to Envoy's `entry_tls`, Envoy forwards to the ingest
/// servers over the private network, and the records land in PostgreSQL.
#[tokio::test]
async fn envoy_terminates_tls_for_producers_and_the_records_are_stored() {
    let backends = Backends::fresh(&tributary::testkit::postgres_admin_url()).await;
    let cluster = Cluster::start_tls(backends, 2, 1).await;
    let (url, certs) = cluster.entry_tls.clone().expect("started with TLS");

    let summary = send(
        &url,
        &["--tls-ca", path(&certs.ca), "--kind", "text", "-n", "3000"],
    )
    .await;
    assert_eq!(summary["acked"], 3000, "{summary}");
    cluster::wait_stored(&cluster, 3000, Duration::from_secs(60)).await;

    // Health through the TLS edge, and a plaintext client refused there.
    let (ok, out, err) = health(&["--connect", &url, "--tls-ca", path(&certs.ca)]).await;
    assert!(ok && out.trim() == "SERVING", "{out} {err}");
    let plain = url.replace("https://localhost", "http://127.0.0.1");
    let (ok, _, _) = health(&["--connect", &plain, "--timeout-secs", "2"]).await;
    assert!(!ok, "Envoy's TLS listener must refuse plaintext");
}

/// A client no code of ours wrote: Python grpcio over TLS, trusting the
/// test CA, publishes and reads its records back.
#[tokio::test]
async fn a_python_grpcio_client_publishes_over_tls() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path());
    let mesh = tls_mesh(data.path(), &certs, &[]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/peer/peer.py");
    let output = Command::new(tool("TRIBUTARY_PYTHON"))
        .arg(&script)
        .arg("--addr")
        .arg(mesh.addr.to_string())
        .arg("--tls-ca")
        .arg(&certs.ca)
        .arg("--count")
        .arg("1000")
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "peer.py over TLS failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("peer ok"));
}

#[tokio::test]
async fn up_with_a_certificate_but_no_ca_for_its_own_clients_stops_before_binding() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path());
    let output = Command::new(BIN)
        .args([
            "up",
            "--no-workloads",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data.path())
        .arg("--tls-cert")
        .arg(&certs.server_cert)
        .arg("--tls-key")
        .arg(&certs.server_key)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains("--tls-ca"), "{err}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"));
}
