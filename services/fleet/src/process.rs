//! One worker process: a port proved free, the spawn, and a clean stop.
//!
//! Each worker runs in a process group of its own. A Ctrl-C in the terminal
//! then reaches only the supervisor, which stops the workers itself, in
//! order, and waits for them; and a stop signals the whole group, so a
//! worker that is a wrapper script leaves no grandchild behind.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::Path,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// How many of a worker's last stderr lines are kept to explain a failure.
const STDERR_TAIL: usize = 5;

/// A port nothing listens on right now: the kernel handed it out for a
/// bind, and the bind is dropped. Another process may still take it before
/// the worker does; the worker then fails to bind and exits, and the
/// supervisor starts it again on another port.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A running worker process.
pub struct Process {
    pub child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    stderr_tail: Arc<Mutex<Vec<String>>>,
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

/// How long an exited worker's last stderr lines are awaited for a report.
const STDERR_SETTLE: Duration = Duration::from_millis(500);

impl Process {
    /// Starts `bin -workerId <id> -port <port> <extra...>`.
    pub fn spawn(bin: &Path, id: u32, port: u16, extra: &[String]) -> std::io::Result<Self> {
        let mut child = Command::new(bin)
            .arg("-workerId")
            .arg(id.to_string())
            .arg("-port")
            .arg(port.to_string())
            .args(extra)
            // So that a worker still starting when the supervisor dies
            // knows whose child it was (`worker::exit_with_parent`).
            .env(
                crate::worker::PARENT_PID_ENV,
                std::process::id().to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            // A last resort: if the supervisor's task is dropped without a
            // stop, the worker still gets SIGKILL.
            .kill_on_drop(true)
            .spawn()?;
        let pid = child
            .id()
            .expect("a just-spawned child has not been reaped");
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let stderr_reader = child.stderr.take().map(|stderr| {
            let tail = stderr_tail.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(worker_id = id, pid, %line, "worker stderr");
                    let mut tail = tail.lock().expect("no panic while holding the lock");
                    if tail.len() == STDERR_TAIL {
                        tail.remove(0);
                    }
                    tail.push(line);
                }
            })
        });
        Ok(Self {
            child,
            pid,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            stderr_tail,
            stderr_reader,
            exit: None,
        })
    }

    /// Waits for the process to exit on its own.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let status = self.child.wait().await?;
        self.exit = Some(status);
        Ok(status)
    }

    /// The last lines the worker wrote to stderr, joined. Once the process
    /// has exited, its last lines are read before answering.
    pub async fn stderr_tail(&mut self) -> String {
        if self.exit.is_some()
            && let Some(reader) = self.stderr_reader.as_mut()
        {
            // The pipe closes when the worker (and whatever inherited its
            // stderr) is gone; a grandchild may keep it open, hence the bound.
            let _ = tokio::time::timeout(STDERR_SETTLE, reader).await;
            self.stderr_reader = None;
        }
        self.stderr_tail
            .lock()
            .expect("no panic while holding the lock")
            .join(" | ")
    }

    /// Stops the worker: SIGTERM to its group, then SIGKILL once `grace` has
    /// passed, and waits for it, so that no zombie and no orphan remain.
    pub async fn stop(&mut self, grace: Duration) {
        let group = Pid::from_raw(i32::try_from(self.pid).expect("Linux pids fit in i32"));
        if self.exit.is_none() {
            let _ = killpg(group, Signal::SIGTERM);
            if tokio::time::timeout(grace, self.wait()).await.is_err() {
                tracing::warn!(
                    pid = self.pid,
                    grace_ms = grace.as_millis() as u64,
                    "worker ignored SIGTERM; killing it"
                );
            }
        }
        // Also reaches whatever the worker left in its group. The group id
        // cannot have been reused: a pid is not handed out while a process
        // group of that id still has members.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.wait().await;
    }
}
