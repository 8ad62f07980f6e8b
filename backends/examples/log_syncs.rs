//! Appends single-record batches, several in flight at once, to a topic of 8 partitions of
//! the embedded log, to count the syncs a group commit costs:
//!
//! ```text
//! cargo build --release -p esh-backends --example log_syncs
//! strace -f -qq -e trace=pwrite64,fdatasync,fsync -o trace.txt target/release/examples/log_syncs 2000 16
//! ```
//!
//! Arguments: appends per task (default 2000) and tasks appending at once (default 16).

use std::sync::Arc;
use std::time::Instant;

use esh_backends::log::EmbeddedMessageLog;
use esh_backends::{MessageLog, Record};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let appends: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let tasks: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(16);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let log = Arc::new(EmbeddedMessageLog::open(dir.path(), 8)?);
    let started = Instant::now();
    runtime.block_on(async {
        let mut running = Vec::new();
        for task in 0..tasks {
            let log = log.clone();
            running.push(tokio::spawn(async move {
                for i in 0..appends {
                    let record = Record { key: format!("conversation-{task}-{}", i % 8), value: vec![b'x'; 200] };
                    log.append("esh.messages.normal", vec![record]).await?;
                }
                Ok::<(), esh_backends::BackendError>(())
            }));
        }
        for task in running {
            task.await??;
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    let elapsed = started.elapsed();
    println!("{} appends of one record in {elapsed:?}", appends * tasks);
    Ok(())
}
