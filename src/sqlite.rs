//! Opening SQLite files the way both the embedded queue and the SQLite store
//! need them: WAL, so readers run beside the one writer, and
//! `synchronous=FULL`, so a commit is on disk before anything is acknowledged.

use std::{path::Path, time::Duration};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

/// Connection options for the file at `path`, creating its directory.
pub(crate) fn options(path: &Path) -> std::io::Result<SqliteConnectOptions> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    Ok(SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10)))
}
