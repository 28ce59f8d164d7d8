//! The first five minutes of a new user: the README's run command works
//! from a fresh clone, defaults meet, and every failure names the address
//! and says what to do, stopping at once when waiting cannot help.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
};
use tributary::testkit::certs::TestCerts;

use crate::support::{BIN, Mesh, Verbatim, eventually, ready_if, spawn_listening, wait_stored};

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// The repository this test binary was built from.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The target directory `BIN` lives in, so that a clone builds into it and
/// reuses what is already built.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(BIN)
            .ancestors()
            .nth(2)
            .expect("the binary lives in <target>/<profile>/")
            .to_owned(),
    }
}

/// The run command of the README's "Two commands" block, split into words,
/// its comment dropped.
fn readme_run_command(readme: &str) -> Vec<String> {
    let block = readme
        .split("## Two commands")
        .nth(1)
        .expect("the README has a \"Two commands\" section");
    let line = block
        .lines()
        .find(|line| line.trim_start().starts_with("cargo run"))
        .expect("the \"Two commands\" section has a `cargo run` line");
    let command = line.split('#').next().unwrap_or_default().trim();
    assert!(
        !command.contains(['\'', '"', '$', '\\']),
        "the run command needs no shell: {command}"
    );
    command.split_whitespace().map(str::to_owned).collect()
}

/// Collects a child's output lines in the background; `wait_for` polls.
struct Lines {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Lines {
    fn read(stream: impl AsyncRead + Unpin + Send + 'static) -> Lines {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Lines { seen }
    }

    fn all(&self) -> String {
        self.seen.lock().unwrap().join("\n")
    }

    /// Waits until a line satisfies `want`, failing after `within`.
    async fn wait_for(&self, what: &str, within: Duration, want: impl Fn(&str) -> bool) -> String {
        eventually(&format!("a line {what}"), within, async || {
            let found = self.seen.lock().unwrap().iter().find(|l| want(l)).cloned();
            found.ok_or_else(|| Verbatim(self.all()))
        })
        .await
    }
}

/// `tributary ARGS…` with stdout and stderr collected as lines.
fn spawn(args: &[&str], envs: &[(&str, &str)]) -> (Child, Lines, Lines) {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the tributary binary starts");
    let out = Lines::read(child.stdout.take().unwrap());
    let err = Lines::read(child.stderr.take().unwrap());
    (child, out, err)
}

/// Waits for `child` to exit, failing after `within`; returns its success.
async fn exits(child: &mut Child, within: Duration, what: &str) -> bool {
    tokio::time::timeout(within, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} still runs after {within:?}"))
        .expect("the child can be waited for")
        .success()
}

/// A port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sigterm(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id().expect("still running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM is delivered");
}

/// The README's run command, exactly as written (the port rewritten to a
/// free one), in a fresh clone of this repository: it serves health. The
/// clone shares this build's target directory, so cargo reuses what
/// `scripts/test.sh` built before the tests, for the profile the README
/// names, rather than building from nothing.
#[tokio::test]
async fn the_readme_run_command_serves_health_from_a_fresh_clone() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md is readable");
    let command = readme_run_command(&readme);
    assert_eq!(
        command[..2],
        ["cargo", "run"],
        "the README runs the mesh with cargo"
    );
    assert_eq!(
        command.last().map(String::as_str),
        Some("up"),
        "{command:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let clone = dir.path().join("tributary");
    let cloned = std::process::Command::new("git")
        .args(["clone", "--quiet", path(&root), path(&clone)])
        .status()
        .expect("git runs");
    assert!(cloned.success(), "git clone of {} failed", root.display());

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(&command[1..])
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(&clone)
        .env("CARGO_TARGET_DIR", target_dir())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cargo starts");
    let out = Lines::read(child.stdout.take().unwrap());
    let err = Lines::read(child.stderr.take().unwrap());
    // A build of the clone's own sources can take a while if the target
    // directory is stale; it never needs more than a few minutes.
    let listening = tokio::select! {
        line = out.wait_for("`listening on`", Duration::from_secs(900), |l| l.starts_with("listening on ")) => line,
        status = child.wait() => panic!(
            "`{}` exited with {status:?}; stderr:\n{}",
            command.join(" "),
            err.all()
        ),
    };
    let addr = listening.trim_start_matches("listening on ");
    let health = Command::new(BIN)
        .args(["health", "--connect", &format!("http://{addr}")])
        .output()
        .await
        .unwrap();
    assert!(
        health.status.success() && String::from_utf8_lossy(&health.stdout).trim() == "SERVING",
        "health of the README's mesh: {health:?}"
    );
    // The data lands in the clone, where the README says.
    assert!(clone.join("tributary-data").is_dir());
    // `cargo run` replaces itself with the binary on Unix: the signal
    // reaches `up`, which stops cleanly.
    sigterm(&child);
    assert!(
        exits(&mut child, Duration::from_secs(60), "up after SIGTERM").await,
        "{}",
        err.all()
    );
}

/// `up` on a port that is taken exits with a hint naming --listen, and has
/// created nothing: no data directory.
#[tokio::test]
async fn up_on_a_busy_port_names_the_flag_and_creates_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = Command::new(BIN)
        .args(["up", "--listen", &addr, "--data-dir", path(&data)])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("--listen"),
        "{stderr}"
    );
    assert!(!data.exists(), "the data directory was created: {stderr}");
}

/// `up` prints where to go next: the dashboard, REST, grpcurl and the data.
/// Its log, written to a file, holds no escape codes; start-up and a clean
/// stop log no WARN.
#[tokio::test]
async fn up_prints_signposts_and_logs_plain_text_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("up.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir", path(&data)])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = Lines::read(child.stdout.take().unwrap());
    let listening = out
        .wait_for("`listening on`", Duration::from_secs(60), |l| {
            l.starts_with("listening on ")
        })
        .await;
    let addr = listening.trim_start_matches("listening on ").to_owned();
    for want in [
        format!("http://{addr}/"),
        format!("http://{addr}/v1/stats"),
        format!("grpcurl -plaintext {addr} list"),
        data.display().to_string(),
    ] {
        out.wait_for(&want, Duration::from_secs(10), |l| l.contains(&want))
            .await;
    }
    // Every workload has run through a parser into the store.
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    eventually(
        "every workload's parser storing records",
        Duration::from_secs(60),
        async || {
            let mut idle = Vec::new();
            for parser in ["average", "probe", "sensor", "raw"] {
                if crate::support::stored(&channel, parser).await == 0 {
                    idle.push(parser);
                }
            }
            // What was seen: the parsers that stored nothing yet.
            ready_if(idle.is_empty(), idle)
        },
    )
    .await;
    sigterm(&child);
    assert!(exits(&mut child, Duration::from_secs(60), "up after SIGTERM").await);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("mesh up"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "escape codes in a log file:\n{text}"
    );
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN "))
        // Ticks or bursts missed because this machine is busy are a true
        // warning, and depend on its load, not on the code under test.
        .filter(|l| !l.contains(" missed="))
        .collect();
    assert!(
        warnings.is_empty(),
        "start-up and clean stop warn:\n{}",
        warnings.join("\n")
    );
}

/// A client against a closed port names the URL: `health` fails at once,
/// `send` fails when its retry time is up, and `monitor` and `parser` say
/// they are retrying.
#[tokio::test]
async fn clients_against_a_closed_port_name_the_address() {
    let url = format!("http://127.0.0.1:{}", closed_port());

    let output = Command::new(BIN)
        .args(["health", "--connect", &url])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(&url),
        "{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );

    let (mut send, _, send_err) = spawn(
        &["send", "--connect", &url, "-n", "10", "--retry-secs", "2"],
        &[],
    );
    assert!(!exits(&mut send, Duration::from_secs(60), "send").await);
    send_err
        .wait_for(
            "naming the URL and the cause",
            Duration::from_secs(5),
            |l| l.contains(&url) && l.contains("gave up") && l.to_lowercase().contains("refused"),
        )
        .await;

    let (_monitor, _, monitor_err) =
        spawn(&["monitor", "--connect", &url, "--every", "100ms"], &[]);
    let complaint = monitor_err
        .wait_for("naming the URL", Duration::from_secs(30), |l| {
            l.contains("cannot read progress") && l.contains(&url)
        })
        .await;
    assert!(complaint.contains("retrying"), "{complaint}");

    let dir = tempfile::tempdir().unwrap();
    let parser_store = format!("sqlite://{}", dir.path().join("p.db").display());
    let (_parser, _, parser_err) = spawn(
        &["parser", "--connect", &url, "--store", &parser_store],
        &[("NO_COLOR", "1")],
    );
    parser_err
        .wait_for("naming the URL", Duration::from_secs(30), |l| {
            l.contains("reconnecting") && l.contains(&url) && l.contains("refused")
        })
        .await;
}

/// What waiting cannot heal (no token, an untrusted CA, plaintext against
/// TLS) stops `send` and `parser` at once, with a hint and without a single
/// retry.
#[tokio::test]
async fn clients_stop_at_once_with_a_hint_on_what_cannot_heal() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let mesh = Mesh::start_bare(
        data.path(),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            path(&certs.server_cert),
            "--tls-key",
            path(&certs.server_key),
            "--tls-ca",
            path(&certs.ca),
            "--auth-token-file",
            path(&token),
        ],
    )
    .await;
    let port = mesh.addr.port();
    let tls = format!("https://localhost:{port}");
    let plain = format!("http://127.0.0.1:{port}");
    let ca = path(&certs.ca);
    let parser_store = format!("sqlite://{}", dir.path().join("p.db").display());
    let cases: [(&str, Vec<&str>, &str); 3] = [
        (
            "no token",
            vec!["--connect", &tls, "--tls-ca", ca],
            "--auth-token-file",
        ),
        ("an untrusted CA", vec!["--connect", &tls], "--tls-ca"),
        (
            "plaintext against TLS",
            vec!["--connect", &plain],
            "https://",
        ),
    ];
    for (case, args, hint) in cases {
        for command in ["send", "parser"] {
            let mut argv = vec![command];
            argv.extend(&args);
            if command == "send" {
                // Far longer than the test waits: an exit proves no retry.
                argv.extend(["-n", "10", "--retry-secs", "600"]);
            } else {
                argv.extend(["--store", parser_store.as_str()]);
            }
            let (mut child, _, err) = spawn(&argv, &[("NO_COLOR", "1")]);
            let ok = tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{command} with {case} still runs after 30 s:\n{}",
                        err.all()
                    )
                })
                .unwrap()
                .success();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let text = err.all();
            assert!(!ok, "{command} with {case} succeeded: {text}");
            assert!(
                text.contains(hint),
                "{command} with {case}: no hint {hint}:\n{text}"
            );
            assert!(
                !text.contains("reconnecting"),
                "{command} with {case} retried:\n{text}"
            );
        }
    }
}

/// Two stand-alone parsers on one machine need no port flags: each health
/// listener takes a free port. The default --connect is where `up` listens.
#[tokio::test]
async fn two_parsers_run_side_by_side_without_port_flags() {
    let data = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(data.path(), "127.0.0.1:0", &[]).await;
    let store = format!("sqlite://{}", data.path().join("tributary.db").display());
    let mut addrs = Vec::new();
    let mut parsers = Vec::new();
    for _ in 0..2 {
        let (child, addr) = spawn_listening(&[
            "parser",
            "--connect",
            &mesh.url(),
            "--parser",
            "{\"type\":\"raw\",\"group\":\"side-by-side\"}",
            "--store",
            &store,
        ])
        .await;
        addrs.push(addr);
        parsers.push(child);
    }
    assert_ne!(addrs[0], addrs[1]);
    for addr in &addrs {
        let output = Command::new(BIN)
            .args(["health", "--connect", &format!("http://{addr}")])
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    let summary = crate::support::send(&mesh.url(), &["-n", "100", "--kind", "text"]).await;
    assert_eq!(summary["acked"], 100, "{summary}");
    wait_stored(
        &mesh.channel().await,
        "side-by-side",
        100,
        Duration::from_secs(60),
    )
    .await;

    let help = Command::new(BIN)
        .args(["parser", "--help"])
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("default: http://127.0.0.1:8080"), "{help}");
    let help = Command::new(BIN)
        .args(["up", "--help"])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("default: 127.0.0.1:8080"));
}

/// A wrong trace endpoint is not silent: the target is logged at start and
/// failing exports are reported.
#[tokio::test]
async fn a_failing_trace_export_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let (_up, _, err) = spawn(
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            path(&dir.path().join("data")),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("RUST_LOG", "info"),
        ],
    );
    err.wait_for("naming the trace endpoint", Duration::from_secs(60), |l| {
        l.contains("exporting traces") && l.contains(&endpoint)
    })
    .await;
    err.wait_for(
        "reporting the failing export",
        Duration::from_secs(120),
        |l| l.contains("trace export failing") && l.contains(&endpoint),
    )
    .await;
}

#[test]
fn the_readme_run_command_is_found() {
    let readme = "# x\n## Two commands\n\n```sh\ncargo run --release -- up   # note\n```\n";
    assert_eq!(
        readme_run_command(readme),
        ["cargo", "run", "--release", "--", "up"]
    );
}

/// The README's TLS quick start, run as written with bash in an empty
/// directory, makes files that `up` and `send` accept: the records are
/// published over TLS with the token.
#[tokio::test]
async fn tls_quick_start() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let block = readme
        .split("<!-- readme-test: tls-quick-start -->")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("the README marks its TLS quick start block");
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .current_dir(dir.path())
        .output()
        .await
        .expect("bash runs");
    assert!(made.status.success(), "{made:?}");
    let file = |name: &str| dir.path().join(name).display().to_string();
    let mesh = Mesh::start_bare(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            &file("server.pem"),
            "--tls-key",
            &file("server-key.pem"),
            "--tls-ca",
            &file("ca.pem"),
            "--auth-token-file",
            &file("token"),
        ],
    )
    .await;
    let summary = crate::support::send(
        &format!("https://localhost:{}", mesh.addr.port()),
        &[
            "--tls-ca",
            &file("ca.pem"),
            "--auth-token-file",
            &file("token"),
            "-n",
            "1000",
        ],
    )
    .await;
    assert_eq!(summary["acked"], 1000, "{summary}");
}
