//! The distributed mesh as local processes: NATS JetStream, PostgreSQL,
//! several ingest servers, parser replicas and the api service behind the
//! real Envoy, running `envoy/envoy.yaml` with only its addresses changed.
//! This is the compose topology without Docker.

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use serde_yaml_ng::Value;
use sqlx::{Connection, PgConnection, Row};
use tokio::process::{Child, Command};
use tributary::testkit::{self, certs::TestCerts};

use crate::support::{Verbatim, eventually, ready_if, spawn_listening, tool};

/// A running `tributary` service process.
pub struct Service {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Service {
    /// SIGKILL: no chance to finish or hand anything back.
    pub async fn kill9(&mut self) {
        self.child.kill().await.expect("the process can be killed");
    }
}

/// What a cluster runs against.
pub struct Backends {
    /// `nats://…?stream=…`, a stream of the test's own, whose messages age
    /// out after an hour so that runs do not fill the shared server.
    pub queue: String,
    /// `postgres://…`, a database of the test's own.
    pub store: String,
}

impl Backends {
    /// A fresh stream on the shared NATS and a fresh database on `admin_url`.
    pub async fn fresh(admin_url: &str) -> Backends {
        Backends {
            queue: format!(
                "{}?stream={}&max_age=3600",
                testkit::nats_url(),
                testkit::unique_name("MESH")
            ),
            store: testkit::postgres_database_on(admin_url).await,
        }
    }

    /// Like [`Backends::fresh`], with the store reached over the server's
    /// Unix socket in `socket_dir` (`postgres:///DB?host=DIR…`), as compose
    /// runs it: no TCP, so no Nagle delay on the store's round trips.
    pub async fn fresh_over_socket(admin_url: &str, socket_dir: &Path) -> Backends {
        let mut backends = Self::fresh(admin_url).await;
        backends.store = testkit::over_socket(&backends.store, socket_dir);
        backends
    }
}

pub struct Cluster {
    pub backends: Backends,
    pub servers: Vec<Service>,
    pub parsers: Vec<Service>,
    /// Held so that the process lives as long as the cluster.
    pub _api: Service,
    /// Held so that the process lives as long as the cluster.
    pub _envoy: Child,
    /// Envoy's entry port, as `http://127.0.0.1:PORT`.
    pub entry: String,
    /// With [`Cluster::start_tls`]: Envoy's TLS entry port, as
    /// `https://localhost:PORT`, and the certificates it serves.
    pub entry_tls: Option<(String, TestCerts)>,
    admin_port: u16,
    _dir: tempfile::TempDir,
}

/// Parser flags shared by every replica: short deadlines, so that what a
/// killed process held comes back within seconds, not the default 30.
const PARSER_FLAGS: &[&str] = &["--pull-ack-deadline-ms", "3000"];

impl Cluster {
    /// Starts `servers` ingest servers, the api service, Envoy in front of
    /// them, and `parsers` replicas of the `raw` parser pulling through Envoy;
    /// returns once Envoy sees every server healthy.
    pub async fn start(backends: Backends, servers: usize, parsers: usize) -> Cluster {
        Self::start_with(backends, servers, parsers, false).await
    }

    /// Like [`Cluster::start`], with Envoy running `envoy/envoy-tls.yaml`:
    /// TLS terminated at its `entry_tls` listener, with fresh certificates.
    pub async fn start_tls(backends: Backends, servers: usize, parsers: usize) -> Cluster {
        Self::start_with(backends, servers, parsers, true).await
    }

    async fn start_with(backends: Backends, servers: usize, parsers: usize, tls: bool) -> Cluster {
        let mut ingest = Vec::new();
        for _ in 0..servers {
            ingest.push(service(&["ingest", "--queue", &backends.queue]).await);
        }
        let api = service(&[
            "api",
            "--store",
            &backends.store,
            "--advertise",
            "tributary.v1.Ingest,tributary.v1.Coordinator",
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let entry_port = testkit::free_port();
        let admin_port = testkit::free_port();
        let edge = tls.then(|| (testkit::free_port(), TestCerts::generate(dir.path())));
        let config = envoy_config(
            if tls { "envoy-tls.yaml" } else { "envoy.yaml" },
            entry_port,
            admin_port,
            &ingest.iter().map(|s| s.addr).collect::<Vec<_>>(),
            api.addr,
            edge.as_ref().map(|(port, certs)| (*port, certs)),
        );
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config).unwrap();
        let envoy = start_envoy(&config_path, dir.path());
        wait_healthy(admin_port, servers).await;
        assert_no_deprecations(&dir.path().join("envoy.log"));
        let entry = format!("http://127.0.0.1:{entry_port}");
        let mut cluster = Cluster {
            backends,
            servers: ingest,
            parsers: Vec::new(),
            _api: api,
            _envoy: envoy,
            entry,
            entry_tls: edge.map(|(port, certs)| (format!("https://localhost:{port}"), certs)),
            admin_port,
            _dir: dir,
        };
        for _ in 0..parsers {
            cluster.add_parser().await;
        }
        cluster
    }

    /// Starts one more replica of the `raw` parser, pulling through Envoy.
    pub async fn add_parser(&mut self) {
        self.add_parser_with("raw").await;
    }

    /// Starts a parser worker of `spec` (a type name or a JSON spec),
    /// pulling through Envoy.
    pub async fn add_parser_with(&mut self, spec: &str) {
        let mut args = vec![
            "parser",
            "--connect",
            &self.entry,
            "--store",
            &self.backends.store,
            "--parser",
            spec,
        ];
        args.extend_from_slice(PARSER_FLAGS);
        let parser = service(&args).await;
        self.parsers.push(parser);
    }

    /// The index of the ingest server carrying the most streams right now,
    /// as Envoy counts them; waits until some server carries one.
    pub async fn busiest_server(&self) -> usize {
        eventually(
            "a server carrying a stream",
            Duration::from_secs(10),
            async || {
                let clusters = admin_get(self.admin_port, "/clusters")
                    .await
                    .unwrap_or_default();
                let active = |addr: SocketAddr| -> u64 {
                    let prefix = format!("server::{addr}::rq_active::");
                    clusters
                        .lines()
                        .find_map(|l| l.strip_prefix(&prefix))
                        .and_then(|n| n.trim().parse().ok())
                        .unwrap_or(0)
                };
                let streams: Vec<u64> = self.servers.iter().map(|s| active(s.addr)).collect();
                let (index, &most) = streams
                    .iter()
                    .enumerate()
                    .max_by_key(|&(_, n)| n)
                    .expect("the cluster has servers");
                // What was seen: the streams each server carries.
                if most > 0 { Ok(index) } else { Err(streams) }
            },
        )
        .await
    }

    /// The health flags Envoy shows for the ingest server at `addr`
    /// (`healthy`, `/failed_active_hc`, …), or an empty string when the
    /// admin port does not answer or lists no such host.
    pub async fn health_flags(&self, addr: SocketAddr) -> String {
        let clusters = admin_get(self.admin_port, "/clusters")
            .await
            .unwrap_or_default();
        let prefix = format!("server::{addr}::health_flags::");
        clusters
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// One counter or gauge of Envoy's `/stats`, if Envoy reports it.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let stats = admin_get(self.admin_port, &format!("/stats?filter={name}")).await?;
        let prefix = format!("{name}: ");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse().ok())
    }

    /// A connection to the cluster's database.
    pub async fn db(&self) -> PgConnection {
        PgConnection::connect(&self.backends.store)
            .await
            .expect("the test database accepts connections")
    }
}

/// Starts a `tributary` service on an ephemeral port.
async fn service(args: &[&str]) -> Service {
    let mut full: Vec<&str> = args.to_vec();
    full.extend_from_slice(&["--listen", "127.0.0.1:0"]);
    let (child, addr) = spawn_listening(&full).await;
    Service { child, addr }
}

/// An Envoy config file of `envoy/`, parsed.
pub fn envoy_file(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../envoy")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("envoy/{name}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("envoy/{name} is not YAML: {e}"))
}

/// `envoy/FILE` with the listeners and admin on the given ports and each
/// cluster pointing at local processes instead of compose DNS names; with
/// `tls`, the `entry_tls` listener on its port serving those certificates.
fn envoy_config(
    file: &str,
    entry: u16,
    admin: u16,
    servers: &[SocketAddr],
    api: SocketAddr,
    tls: Option<(u16, &TestCerts)>,
) -> String {
    let mut config = envoy_file(file);
    config["admin"]["address"]["socket_address"]["port_value"] = admin.into();
    let listener = &mut config["static_resources"]["listeners"][0];
    listener["address"]["socket_address"]["port_value"] = entry.into();
    listener["address"]["socket_address"]["address"] = "127.0.0.1".into();
    if let Some((port, certs)) = tls {
        let listener = &mut config["static_resources"]["listeners"][1];
        assert_eq!(listener["name"].as_str(), Some("entry_tls"));
        listener["address"]["socket_address"]["port_value"] = port.into();
        listener["address"]["socket_address"]["address"] = "127.0.0.1".into();
        let context = &mut listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
            ["tls_certificates"][0];
        context["certificate_chain"]["filename"] = certs.server_cert.to_str().unwrap().into();
        context["private_key"]["filename"] = certs.server_key.to_str().unwrap().into();
    }
    // No coordinator runs here: its cluster points at a port nobody serves.
    let nobody: SocketAddr = ([127, 0, 0, 1], testkit::free_port()).into();
    let clusters = config["static_resources"]["clusters"]
        .as_sequence_mut()
        .expect("envoy.yaml has clusters");
    let mut renamed = 0;
    for cluster in clusters {
        let addrs: Vec<SocketAddr> = match cluster["name"].as_str() {
            Some("server") => servers.to_vec(),
            Some("api") => vec![api],
            Some("coordinator") => vec![nobody],
            other => panic!("envoy.yaml has a cluster this test does not know: {other:?}"),
        };
        let endpoints: Vec<Value> = addrs
            .iter()
            .map(|a| {
                serde_yaml_ng::from_str(&format!(
                    "endpoint: {{ address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }} }}",
                    a.ip(),
                    a.port()
                ))
                .unwrap()
            })
            .collect();
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = Value::Sequence(endpoints);
        renamed += 1;
    }
    assert_eq!(
        renamed, 3,
        "envoy.yaml's clusters changed; update this test"
    );
    serde_yaml_ng::to_string(&config).unwrap()
}

fn start_envoy(config: &Path, dir: &Path) -> Child {
    Command::new(tool("TRIBUTARY_ENVOY"))
        .arg("-c")
        .arg(config)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ])
        .arg("--log-path")
        .arg(dir.join("envoy.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("Envoy starts")
}

/// A GET to Envoy's admin port. Plain HTTP/1.1 over a socket: the admin
/// answers and closes, and this keeps an HTTP client out of the test build.
async fn admin_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    socket
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
    let mut body = String::new();
    socket.read_to_string(&mut body).await.ok()?;
    Some(body)
}

/// Envoy logs each deprecated field of its configuration as a warning
/// once it has loaded it, which it has by the time health checks pass: the
/// shared `envoy.yaml` must use none, so that an Envoy upgrade that removes
/// them does not break compose.
fn assert_no_deprecations(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("Envoy's log: {e}"));
    let deprecated: Vec<&str> = text
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("deprecated"))
        .collect();
    assert!(
        deprecated.is_empty(),
        "Envoy warns of deprecated configuration at start-up:\n{}",
        deprecated.join("\n")
    );
}

/// Waits until Envoy's active health checks pass for `servers` ingest
/// servers and the api service.
async fn wait_healthy(admin_port: u16, servers: usize) {
    eventually(
        &format!("Envoy to see {servers} servers and the api healthy"),
        Duration::from_secs(30),
        async || {
            let clusters = admin_get(admin_port, "/clusters").await.unwrap_or_default();
            let healthy = |name: &str| {
                clusters
                    .lines()
                    .filter(|l| {
                        l.starts_with(&format!("{name}::")) && l.ends_with("health_flags::healthy")
                    })
                    .count()
            };
            let done = healthy("server") == servers && healthy("api") == 1;
            ready_if(done, Verbatim(clusters))
        },
    )
    .await;
}

/// Rows the `raw` parser stored.
pub async fn stored(db: &mut PgConnection) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM records WHERE parser = 'raw'")
        .fetch_one(db)
        .await
        .map(|row| row.get(0))
        .unwrap_or(0)
}

/// Polls until the `raw` parser has stored at least `want` rows.
pub async fn wait_stored(cluster: &Cluster, want: i64, within: Duration) {
    eventually(&format!("{want} rows stored"), within, async || {
        // A fresh connection each time: the database may have restarted.
        match PgConnection::connect(&cluster.backends.store).await {
            Ok(mut db) => {
                let now = stored(&mut db).await;
                ready_if(now >= want, format!("{now} rows stored"))
            }
            Err(e) => Err(format!("the database is not back: {e}")),
        }
    })
    .await;
}

/// (rows, distinct seqs, min seq, max seq) of one source.
pub async fn rows_of(db: &mut PgConnection, source: &str) -> (i64, i64, i64, i64) {
    let row = sqlx::query(
        "SELECT COUNT(*), COUNT(DISTINCT seq), COALESCE(MIN(seq), -1), COALESCE(MAX(seq), -1) \
         FROM records WHERE parser = 'raw' AND source = $1",
    )
    .bind(source)
    .fetch_one(db)
    .await
    .expect("the records table is readable");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// Records each parser replica stored (one row per store handle).
pub async fn shares(db: &mut PgConnection) -> Vec<i64> {
    sqlx::query("SELECT stored FROM parser_counts WHERE parser = 'raw' ORDER BY writer")
        .fetch_all(db)
        .await
        .expect("parser_counts is readable")
        .into_iter()
        .map(|row| row.get(0))
        .collect()
}

/// Dead letters in the cluster's store.
pub async fn dead_letters(db: &mut PgConnection) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM dead_letters")
        .fetch_one(db)
        .await
        .expect("dead_letters is readable")
        .get(0)
}

/// Starts a producer of `count` text records from `source` through Envoy.
pub fn producer(cluster: &Cluster, source: &str, count: u64, rate: u64) -> Child {
    crate::support::send_command(
        &cluster.entry,
        &[
            "--kind",
            "text",
            "--count",
            &count.to_string(),
            "--rate",
            &rate.to_string(),
            "--source",
            source,
            "--retry-secs",
            "60",
            "--rollover-secs",
            "2",
        ],
    )
    .spawn()
    .expect("tributary send starts")
}

/// Waits for a producer and returns its JSON summary; it must succeed.
pub async fn finish(producer: Child) -> serde_json::Value {
    let output = tokio::time::timeout(Duration::from_secs(180), producer.wait_with_output())
        .await
        .expect("the producer finishes within 3 minutes")
        .unwrap();
    assert!(
        output.status.success(),
        "producer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("send --json prints one JSON object")
}
