//! The call memo: one row per finished model call, in SQLite (WAL), committed as calls
//! finish — a `kill -9` loses at most the calls in flight, and two runs can share it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::CallResult;

#[derive(Debug, thiserror::Error)]
#[error("call memo {path}: {source}")]
pub struct MemoError {
    pub path: PathBuf,
    #[source]
    pub source: rusqlite::Error,
}

/// How long a connection waits for another one (of this or another run) to let go.
const BUSY_WAIT: Duration = Duration::from_secs(30);

fn set_up(conn: &Connection) -> rusqlite::Result<()> {
    // WAL: readers never block the writer; NORMAL: a commit survives a crash of the process.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS calls (
            key TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            status TEXT NOT NULL,
            result TEXT NOT NULL,
            created_unix_ms INTEGER NOT NULL
        ) WITHOUT ROWID;",
    )
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

pub struct Memo {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Memo {
    /// Opens (creating if needed) the memo at `path`.
    pub fn open(path: &Path) -> Result<Memo, MemoError> {
        let err = |source| MemoError { path: path.to_path_buf(), source };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_WAIT).map_err(err)?;
        // Two connections setting up a fresh file can deadlock on its lock, and SQLite then
        // answers "locked" at once instead of waiting: such a start is simply tried again.
        let deadline = Instant::now() + BUSY_WAIT;
        let mut pause = Duration::from_millis(2);
        loop {
            match set_up(&conn) {
                Ok(()) => break,
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(e) => return Err(err(e)),
            }
        }
        Ok(Memo { path: path.to_path_buf(), conn: Mutex::new(conn) })
    }

    fn err(&self, source: rusqlite::Error) -> MemoError {
        MemoError { path: self.path.clone(), source }
    }

    pub fn get(&self, key: &str) -> Result<Option<CallResult>, MemoError> {
        let conn = self.conn.lock().expect("memo lock");
        let json: Option<String> = conn
            .query_row("SELECT result FROM calls WHERE key = ?1", params![key], |row| row.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// The remembered results among `keys`.
    pub fn get_many<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<HashMap<String, CallResult>, MemoError> {
        let conn = self.conn.lock().expect("memo lock");
        let mut stmt = conn.prepare_cached("SELECT result FROM calls WHERE key = ?1").map_err(|e| self.err(e))?;
        let mut found = HashMap::new();
        for key in keys {
            let json: Option<String> =
                stmt.query_row(params![key], |row| row.get(0)).optional().map_err(|e| self.err(e))?;
            // A row that does not parse (written by another version) is simply not a hit.
            if let Some(result) = json.and_then(|j| serde_json::from_str::<CallResult>(&j).ok()) {
                found.insert(key.to_string(), result);
            }
        }
        Ok(found)
    }

    /// Remembers finished calls in one transaction; an existing row is kept (first wins).
    pub fn put_many(&self, rows: &[(String, String, CallResult)]) -> Result<(), MemoError> {
        let mut conn = self.conn.lock().expect("memo lock");
        // IMMEDIATE: take the write lock at BEGIN, where SQLite waits for it, not half-way.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO calls (key, model, status, result, created_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(|e| self.err(e))?;
            for (key, model, result) in rows {
                let json = serde_json::to_string(result).expect("call results always serialize");
                stmt.execute(params![key, model, result.status.as_str(), json, crate::store::now_ms() as i64])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Writes a copy of the memo to `path`, which must not exist yet: the private memo of a
    /// process elsewhere (a Slurm job), which answers from it what is remembered and adds to it
    /// what it sends, so that no two hosts ever write one SQLite file.
    pub fn copy_to(&self, path: &Path) -> Result<(), MemoError> {
        let conn = self.conn.lock().expect("memo lock");
        let target = path.to_str().ok_or_else(|| self.err(rusqlite::Error::InvalidPath(path.to_path_buf())))?;
        conn.execute("VACUUM INTO ?1", params![target]).map(|_| ()).map_err(|e| self.err(e))
    }

    /// Adds what the memo at `path` remembers and this one does not (first wins, as in
    /// [`Memo::put_many`]); how many calls it added.
    pub fn merge_from(&self, path: &Path) -> Result<u64, MemoError> {
        let conn = self.conn.lock().expect("memo lock");
        let other = path.to_str().ok_or_else(|| self.err(rusqlite::Error::InvalidPath(path.to_path_buf())))?;
        conn.execute("ATTACH DATABASE ?1 AS other", params![other]).map_err(|e| self.err(e))?;
        let added = conn.execute(
            "INSERT OR IGNORE INTO calls (key, model, status, result, created_unix_ms) \
             SELECT key, model, status, result, created_unix_ms FROM other.calls",
            [],
        );
        let detached = conn.execute("DETACH DATABASE other", []);
        let added = added.map_err(|e| self.err(e))?;
        detached.map_err(|e| self.err(e))?;
        Ok(added as u64)
    }

    /// How many calls are remembered.
    pub fn len(&self) -> Result<u64, MemoError> {
        let conn = self.conn.lock().expect("memo lock");
        conn.query_row("SELECT COUNT(*) FROM calls", [], |row| row.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    pub fn is_empty(&self) -> Result<bool, MemoError> {
        self.len().map(|n| n == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::CallStatus;

    fn result(text: &str) -> CallResult {
        CallResult {
            status: CallStatus::Ok,
            text: Some(text.into()),
            finish_reason: Some("stop".into()),
            tokens_in: Some(3),
            tokens_out: Some(2),
            latency_ms: 5,
            detail: None,
        }
    }

    #[test]
    fn remembers_across_opens_and_keeps_the_first_result() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.sqlite");
        let memo = Memo::open(&path).unwrap();
        memo.put_many(&[("k1".into(), "m".into(), result("one"))]).unwrap();
        memo.put_many(&[("k1".into(), "m".into(), result("again")), ("k2".into(), "m".into(), result("two"))]).unwrap();
        drop(memo);
        let memo = Memo::open(&path).unwrap();
        assert_eq!(memo.get("k1").unwrap().unwrap().text.as_deref(), Some("one"));
        let found = memo.get_many(["k1", "k2", "k3"]).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(memo.len().unwrap(), 2);
    }

    #[test]
    fn stages_opening_a_fresh_memo_at_once_all_get_it() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("calls.sqlite");
            let threads: Vec<_> = (0..8)
                .map(|i| {
                    let path = path.clone();
                    std::thread::spawn(move || {
                        Memo::open(&path)?.put_many(&[(format!("k{i}"), "m".into(), result(&i.to_string()))])
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap().unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
            assert_eq!(Memo::open(&path).unwrap().len().unwrap(), 8);
        }
    }

    #[test]
    fn a_copy_answers_what_was_remembered_and_merging_it_back_adds_only_what_is_new() {
        let dir = tempfile::tempdir().unwrap();
        let (main, copy) = (dir.path().join("calls.sqlite"), dir.path().join("job.sqlite"));
        let memo = Memo::open(&main).unwrap();
        memo.put_many(&[("k1".into(), "m".into(), result("one"))]).unwrap();
        memo.copy_to(&copy).unwrap();
        let job = Memo::open(&copy).unwrap();
        assert_eq!(job.get("k1").unwrap().unwrap().text.as_deref(), Some("one"));
        job.put_many(&[("k2".into(), "m".into(), result("two"))]).unwrap();
        drop(job);
        assert_eq!(memo.merge_from(&copy).unwrap(), 1);
        assert_eq!(memo.len().unwrap(), 2);
        assert_eq!(memo.get("k2").unwrap().unwrap().text.as_deref(), Some("two"));
        assert_eq!(memo.merge_from(&copy).unwrap(), 0, "merging twice adds nothing");
    }
}
