//! `docs/walkthrough.ipynb` runs headless against a real `tributary up`
//! (with its demo workloads) and every cell succeeds: nbclient in the
//! project venv executes it, and a failing cell fails this test.

use std::{path::Path, process::Stdio, time::Duration};

use tokio::process::Command;

use crate::support::{Mesh, tool};

/// nbclient's programmatic runner: the notebook's own directory is the
/// kernel's working directory, as when a user opens it; a cell error raises
/// and the interpreter exits non-zero with the failing cell in the message.
const RUNNER: &str = "
import sys, nbformat
from nbclient import NotebookClient
path, cwd = sys.argv[1], sys.argv[2]
nb = nbformat.read(path, as_version=4)
NotebookClient(nb, timeout=120, kernel_name='python3',
               resources={'metadata': {'path': cwd}}).execute()
print('executed', sum(c.cell_type == 'code' for c in nb.cells), 'code cells')
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_notebook_runs_against_a_live_mesh() {
    let python = tool("TRIBUTARY_PYTHON");
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_with_workloads(dir.path(), "127.0.0.1:0", &[]).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let docs = root.join("docs");
    let run = Command::new(python)
        .args(["-c", RUNNER])
        .arg(docs.join("walkthrough.ipynb"))
        .arg(&docs)
        .env("TRIBUTARY_URL", mesh.url())
        .env("TRIBUTARY_STORE_PATH", dir.path().join("tributary.db"))
        .env("TRIBUTARY_PROTO_DIR", root.join("proto"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the notebook finishes within 5 minutes")
        .expect("the project venv's Python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "a notebook cell failed:\n{stdout}\n{stderr}"
    );
    let notebook: serde_json::Value =
        serde_json::from_slice(&std::fs::read(docs.join("walkthrough.ipynb")).unwrap()).unwrap();
    let cells = notebook["cells"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["cell_type"] == "code")
        .count();
    assert!(
        stdout.contains(&format!("executed {cells} code cells")),
        "{stdout}"
    );
}
