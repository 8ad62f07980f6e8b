//! The machinery under the store: one writer thread that owns the write connection and
//! commits many queued requests in one transaction (group commit), a small pool of
//! read-only connections used from `spawn_blocking`, and the mapping of SQLite errors
//! onto `BackendError`.

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::BackendError;

/// Requests waiting for the writer; senders wait when it is full.
pub(super) const WRITE_QUEUE: usize = 1024;
/// Rows (messages, changes, attempts…) after which the writer stops adding queued
/// requests to the open transaction and commits.
const MAX_BATCH_WEIGHT: usize = 2000;
/// Read-only connections, hence reads running at the same time.
pub(super) const READERS: usize = 4;
/// How long a connection waits for a lock held by another connection.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 64;

/// An error inside the store: converts from SQLite, JSON and backend errors so that `?`
/// works everywhere, and back into `BackendError` at the trait boundary.
#[derive(Debug)]
pub(super) struct Failure(pub(super) BackendError);

impl From<BackendError> for Failure {
    fn from(error: BackendError) -> Self {
        Failure(error)
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Failure(from_sqlite(error))
    }
}

/// Stored data that cannot be decoded.
pub(super) fn corrupt(what: impl std::fmt::Display) -> Failure {
    Failure(BackendError::Corrupt(what.to_string()))
}

/// Busy, locked and I/O errors are worth retrying (`Unavailable`); a constraint is a
/// `Conflict`; undecodable or damaged data is `Corrupt`.
pub(super) fn from_sqlite(error: rusqlite::Error) -> BackendError {
    use rusqlite::ErrorCode;
    match &error {
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::ConstraintViolation => BackendError::Conflict(format!("sqlite: {error}")),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => BackendError::Corrupt(format!("sqlite: {error}")),
            _ => BackendError::Unavailable(format!("sqlite: {error}")),
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::Utf8Error(..) => BackendError::Corrupt(format!("sqlite: {error}")),
        _ => BackendError::Unavailable(format!("sqlite: {error}")),
    }
}

/// The same error again, for every request of a batch that failed as a whole.
fn repeat(error: &BackendError) -> BackendError {
    match error {
        BackendError::NotFound(text) => BackendError::NotFound(text.clone()),
        BackendError::Conflict(text) => BackendError::Conflict(text.clone()),
        BackendError::Timeout(text) => BackendError::Timeout(text.clone()),
        BackendError::Corrupt(text) => BackendError::Corrupt(text.clone()),
        other => BackendError::Unavailable(other.to_string()),
    }
}

fn stopped() -> BackendError {
    BackendError::Unavailable("store writer stopped".into())
}

/// WAL pages after which a commit checkpoints them into the database (40 MB at 4 KiB pages).
const WAL_CHECKPOINT_PAGES: i64 = 10_000;

/// Settings every connection shares.
fn configure(connection: &Connection, cache_kib: i64) -> Result<(), Failure> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    connection.pragma_update(None, "cache_size", -cache_kib)?;
    Ok(())
}

/// Opens the write connection: WAL, and `synchronous=FULL` so that every committed
/// transaction survives a crash or power loss.
pub(super) fn open_writer(path: &Path) -> Result<Connection, Failure> {
    let connection = Connection::open(path)?;
    configure(&connection, 16 * 1024)?;
    let mode: String = connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Failure(BackendError::Unavailable(format!(
            "cannot switch {} to WAL (got {mode})",
            path.display()
        ))));
    }
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", false)?;
    // Checkpoints every WAL_CHECKPOINT_PAGES rather than SQLite's 1,000: the projection
    // rewrites the same hot pages (index leaves, counters) in transaction after
    // transaction, and a checkpoint copies each page once however often the WAL holds it.
    connection.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
    Ok(connection)
}

fn open_reader(path: &Path) -> Result<Connection, Failure> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let connection = Connection::open_with_flags(path, flags)?;
    configure(&connection, 8 * 1024)?;
    Ok(connection)
}

/// What a request answers once its transaction has ended: `None` if it committed.
type Answer = Box<dyn FnOnce(Option<&BackendError>) + Send>;

/// One queued write request.
trait Job: Send {
    /// Rows it writes, for sizing batches.
    fn weight(&self) -> usize;
    /// Runs it inside the open transaction, in a savepoint of its own so that its failure
    /// leaves the other requests of the batch intact.
    fn run(self: Box<Self>, connection: &Connection) -> Answer;
    /// Answers without running (the transaction could not start).
    fn refuse(self: Box<Self>, error: &BackendError);
}

struct Work<T, F> {
    weight: usize,
    work: F,
    reply: oneshot::Sender<Result<T, BackendError>>,
}

impl<T, F> Job for Work<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, Failure> + Send,
{
    fn weight(&self) -> usize {
        self.weight
    }

    fn run(self: Box<Self>, connection: &Connection) -> Answer {
        let Work { work, reply, .. } = *self;
        let outcome = in_savepoint(connection, work);
        Box::new(move |failed: Option<&BackendError>| {
            let answer = match failed {
                Some(error) => Err(repeat(error)),
                None => outcome,
            };
            // The caller may have gone away; the write stands either way.
            let _ = reply.send(answer);
        })
    }

    fn refuse(self: Box<Self>, error: &BackendError) {
        let _ = self.reply.send(Err(repeat(error)));
    }
}

fn in_savepoint<T>(
    connection: &Connection,
    work: impl FnOnce(&Connection) -> Result<T, Failure>,
) -> Result<T, BackendError> {
    // SQLite rolls the whole transaction back on some errors (disk full, I/O); what runs
    // after that must not run outside a transaction.
    if connection.is_autocommit() {
        return Err(BackendError::Unavailable("transaction aborted by an earlier error".into()));
    }
    connection.prepare_cached("SAVEPOINT job").and_then(|mut s| s.execute([])).map_err(from_sqlite)?;
    match work(connection) {
        Ok(value) => {
            connection.prepare_cached("RELEASE job").and_then(|mut s| s.execute([])).map_err(from_sqlite)?;
            Ok(value)
        }
        Err(Failure(error)) => {
            if connection.execute_batch("ROLLBACK TO job; RELEASE job").is_err() {
                // The savepoint is gone: give up the whole transaction (its COMMIT then fails
                // and every request of the batch is told).
                let _ = connection.execute_batch("ROLLBACK");
            }
            Err(error)
        }
    }
}

/// The single writer: a thread owning the write connection, fed by a bounded queue.
pub(super) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(super) fn start(connection: Connection) -> Result<Writer, BackendError> {
        let (jobs, queue) = mpsc::channel(WRITE_QUEUE);
        let thread =
            std::thread::Builder::new().name("esh-store-writer".into()).spawn(move || write_loop(connection, queue))?;
        Ok(Writer { jobs, thread: Some(thread) })
    }

    /// Runs `work` in the writer's next transaction and answers once it is committed.
    pub(super) async fn write<T, F>(&self, weight: usize, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Work { weight: weight.max(1), work, reply });
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub(super) fn is_running(&self) -> bool {
        !self.jobs.is_closed()
    }

    /// Closes the queue and waits until the thread has committed what was queued.
    pub(super) fn stop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
    }
}

fn write_loop(connection: Connection, mut queue: mpsc::Receiver<Box<dyn Job>>) {
    while let Some(first) = queue.blocking_recv() {
        let mut weight = first.weight();
        let mut batch = vec![first];
        while weight < MAX_BATCH_WEIGHT {
            let Ok(job) = queue.try_recv() else { break };
            weight += job.weight();
            batch.push(job);
        }
        commit_batch(&connection, batch);
    }
}

/// One transaction for the whole batch; every request is answered after the COMMIT.
fn commit_batch(connection: &Connection, batch: Vec<Box<dyn Job>>) {
    if let Err(error) = connection.prepare_cached("BEGIN IMMEDIATE").and_then(|mut s| s.execute([])) {
        let error = from_sqlite(error);
        tracing::warn!(%error, "cannot begin a store transaction");
        for job in batch {
            job.refuse(&error);
        }
        return;
    }
    let answers: Vec<Answer> = batch.into_iter().map(|job| job.run(connection)).collect();
    match connection.prepare_cached("COMMIT").and_then(|mut s| s.execute([])) {
        Ok(_) => answers.into_iter().for_each(|answer| answer(None)),
        Err(error) => {
            let error = from_sqlite(error);
            tracing::warn!(%error, "cannot commit a store transaction");
            if !connection.is_autocommit() {
                let _ = connection.execute_batch("ROLLBACK");
            }
            answers.into_iter().for_each(|answer| answer(Some(&error)));
        }
    }
}

/// Read-only connections handed out one per read; a semaphore keeps the number of
/// reads in flight at the number of connections.
pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    pub(super) fn open(path: &Path, count: usize) -> Result<Readers, Failure> {
        let idle = (0..count).map(|_| open_reader(path)).collect::<Result<Vec<_>, _>>()?;
        Ok(Readers { path: path.to_path_buf(), idle: Mutex::new(idle), permits: Arc::new(Semaphore::new(count)) })
    }

    /// Runs `work` on a read connection on the blocking pool.
    pub(super) async fn read<T, F>(self: &Arc<Self>, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| BackendError::Unavailable("store closed".into()))?;
        let readers = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let connection = readers.take().map_err(|Failure(error)| error)?;
            let outcome = work(&connection).map_err(|Failure(error)| error);
            readers.give_back(connection);
            outcome
        });
        task.await.map_err(|error| BackendError::Unavailable(format!("store read task failed: {error}")))?
    }

    fn take(&self) -> Result<Connection, Failure> {
        let pooled = self.idle.lock().unwrap_or_else(|poison| poison.into_inner()).pop();
        match pooled {
            Some(connection) => Ok(connection),
            // Only after a read panicked and lost its connection.
            None => open_reader(&self.path),
        }
    }

    fn give_back(&self, connection: Connection) {
        if !connection.is_autocommit() && connection.execute_batch("ROLLBACK").is_err() {
            return;
        }
        self.idle.lock().unwrap_or_else(|poison| poison.into_inner()).push(connection);
    }
}
