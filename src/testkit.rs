//! Test support: fresh databases and stream names on the shared services, and
//! private PostgreSQL and NATS instances for tests that stop or kill them.
//!
//! Compiled for this crate's tests and, through the `testkit` feature, for the
//! other crates' tests; never part of a release binary.
//!
//! Everything here fails loudly: a test that needs a real service and cannot
//! reach it panics with what to start, rather than passing without it.

pub mod certs;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sqlx::{Connection, PgConnection};

/// The shared PostgreSQL server's admin URL (`TRIBUTARY_TEST_POSTGRES`, or
/// the machines' default on loopback).
pub fn postgres_admin_url() -> String {
    std::env::var("TRIBUTARY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The shared NATS server's URL (`TRIBUTARY_TEST_NATS`, or loopback 4222).
pub fn nats_url() -> String {
    std::env::var("TRIBUTARY_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A name no other test run uses: `prefix`, the process id and a random part.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Creates an empty database on the server `admin_url` names and returns its
/// URL.
pub async fn postgres_database_on(admin_url: &str) -> String {
    let mut admin = PgConnection::connect(admin_url).await.unwrap_or_else(|e| {
        panic!(
            "cannot reach PostgreSQL at {admin_url} ({e}); start it (scripts/test.sh does) \
             or set TRIBUTARY_TEST_POSTGRES"
        )
    });
    drop_abandoned_databases(&mut admin).await;
    let name = unique_name("tributary_test");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("CREATE DATABASE");
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("the admin URL names a database");
    format!("{base}/{name}")
}

/// Drops test databases whose creating process is gone, so that runs do not
/// pile up data on the shared server. A database still in use refuses to be
/// dropped, and is left alone. At most three per call: a drop costs a
/// checkpoint, and each test creating one database and dropping up to three
/// keeps the count falling without slowing any test much.
async fn drop_abandoned_databases(admin: &mut PgConnection) {
    use sqlx::Row;
    let names: Vec<String> =
        sqlx::query("SELECT datname FROM pg_database WHERE datname LIKE 'tributary\\_test\\_%'")
            .fetch_all(&mut *admin)
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
    let abandoned = names.into_iter().filter(|name| {
        let pid = name.split('_').nth(2).unwrap_or_default();
        !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists()
    });
    for name in abandoned.take(3) {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}"
        )))
        .execute(&mut *admin)
        .await;
    }
}

/// The directory of the shared PostgreSQL server's Unix socket
/// (`TRIBUTARY_TEST_POSTGRES_SOCKET`, or Debian's `/var/run/postgresql`).
pub fn postgres_socket_dir() -> PathBuf {
    std::env::var_os("TRIBUTARY_TEST_POSTGRES_SOCKET")
        .map_or_else(|| PathBuf::from("/var/run/postgresql"), PathBuf::from)
}

/// The same database as the `postgres://USER@HOST:PORT/DB` URL `url`,
/// reached over the Unix socket in `socket_dir` instead of TCP:
/// `postgres:///DB?host=DIR&port=PORT&user=USER`. Fails loudly when no
/// server listens there.
pub fn over_socket(url: &str, socket_dir: &Path) -> String {
    let options: sqlx::postgres::PgConnectOptions = url
        .parse()
        .unwrap_or_else(|e| panic!("{url} is not a PostgreSQL URL: {e}"));
    let port = options.get_port();
    let socket = socket_dir.join(format!(".s.PGSQL.{port}"));
    assert!(
        socket.exists(),
        "no PostgreSQL socket at {} (set TRIBUTARY_TEST_POSTGRES_SOCKET to its directory)",
        socket.display()
    );
    format!(
        "postgres:///{}?host={}&port={port}&user={}",
        options.get_database().unwrap_or("postgres"),
        socket_dir.display(),
        options.get_username()
    )
}

/// Creates an empty database on the shared server and returns its URL.
pub async fn postgres_database() -> String {
    postgres_database_on(&postgres_admin_url()).await
}

/// A free TCP port on loopback, as the kernel hands them out. Another process
/// could take it before it is used; the callers bind it within milliseconds.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// Polls `ready` every 50 ms until it holds or `within` passes.
pub fn wait_until(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} not ready within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The longest pause between two polls of [`eventually`]. Polls start
/// quicker, so that a condition that holds soon is seen soon, and slow down
/// to this, so that a long wait does not load the processes under test.
const POLL_MAX: Duration = Duration::from_millis(200);

/// Polls `probe` until it answers `Ok`, and returns what it answered.
/// `Err` carries what the probe saw instead; when `within` has passed, the
/// test fails naming `what` it waited for and the last thing seen. The
/// async sibling of [`wait_until`], for probes that call the code under
/// test.
pub async fn eventually<T, Seen: std::fmt::Debug>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, Seen>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(20);
    loop {
        let seen = match probe().await {
            Ok(done) => return done,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {within:?} for {what}; last seen: {seen:#?}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// A PostgreSQL server of the test's own, in a temporary directory, on a free
/// port: a test may stop and start it without disturbing anyone else.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// Creates a cluster with `initdb` (trust auth) and starts it.
    pub fn start() -> Self {
        let bin = postgres_bin_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            // initdb and postgres refuse to run as root.
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(dir.path()));
        }
        let data = dir.path().join("data");
        run(as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data));
        let server = Self {
            dir,
            bin,
            port: free_port(),
        };
        server.resume();
        server
    }

    /// The admin URL (database `postgres`).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server, fast: sessions are cut as in a crash or restart.
    pub fn stop(&self) {
        run(as_postgres(&self.bin.join("pg_ctl"))
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(self.dir.path().join("data")));
    }

    /// Starts the server again on the same port and waits until it answers.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(as_postgres(&self.bin.join("pg_ctl"))
            .args(["start", "-w", "-t", "30", "-o", &options, "-l"])
            .arg(self.dir.path().join("log"))
            .arg("-D")
            .arg(self.dir.path().join("data")));
        wait_until("private PostgreSQL", Duration::from_secs(30), || {
            port_open(self.port)
        });
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// The directory holding `initdb` and `pg_ctl`: `TRIBUTARY_PG_BIN`, else the
/// newest Debian install.
fn postgres_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TRIBUTARY_PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .map(|v| v.join("bin"))
        .filter(|b| b.join("initdb").exists())
        .expect("PostgreSQL server binaries not found: install Debian's postgresql or set TRIBUTARY_PG_BIN")
}

/// A NATS server with JetStream of the test's own, storing in a temporary
/// directory, on a free port.
pub struct PrivateNats {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts `nats-server -js` and waits until it answers.
    pub fn start() -> Self {
        let mut server = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            child: None,
        };
        server.resume();
        server
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store directory.
    pub fn resume(&mut self) {
        let program = std::env::var("TRIBUTARY_NATS_SERVER").unwrap_or_else(|_| {
            // Debian installs it outside an ordinary user's PATH.
            let debian = "/usr/sbin/nats-server";
            if Path::new(debian).exists() {
                debian
            } else {
                "nats-server"
            }
            .into()
        });
        let child = Command::new(&program)
            .args(["-a", "127.0.0.1", "-js", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program} ({e}); install Debian's nats-server or set TRIBUTARY_NATS_SERVER")
            });
        self.child = Some(child);
        wait_until("private NATS", Duration::from_secs(20), || {
            port_open(self.port)
        });
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}
