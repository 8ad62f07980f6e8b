//! A Kafka-protocol broker for tests: the one named by `ESH_TEST_KAFKA=host:port`, or a
//! `tansu` broker started on a free loopback port with its storage in memory, stopped
//! when dropped. Without `tansu` on the PATH (and no `ESH_TEST_KAFKA`), starting one fails
//! with the command that installs it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The command that installs the broker the tests start.
pub const TANSU_INSTALL: &str = "cargo install tansu --locked --no-default-features --features dynostore";

/// How long a started broker may take to accept connections.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// A broker the tests may use (see the module docs).
pub struct KafkaBroker {
    /// `host:port` to bootstrap from.
    pub address: String,
    process: Option<Child>,
}

impl KafkaBroker {
    /// The broker of `ESH_TEST_KAFKA`, or a new `tansu` process (panics when it cannot start).
    pub fn start() -> KafkaBroker {
        if let Ok(address) = std::env::var("ESH_TEST_KAFKA") {
            return KafkaBroker { address, process: None };
        }
        KafkaBroker::start_tansu()
    }

    /// A new `tansu` process, whatever `ESH_TEST_KAFKA` says: a broker of one's own, for a
    /// platform whose topic names are fixed (panics when it cannot start).
    pub fn start_tansu() -> KafkaBroker {
        // The free port is found by binding and releasing it, so another process may take it
        // before tansu binds it; tansu then exits at once, and a new port is tried.
        for _ in 0..3 {
            if let Some(broker) = KafkaBroker::try_start_tansu() {
                return broker;
            }
        }
        panic!("tansu exited at start three times: is it installed (`{TANSU_INSTALL}`), or were the ports taken?");
    }

    fn try_start_tansu() -> Option<KafkaBroker> {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let url = format!("tcp://127.0.0.1:{port}");
        // tansu under a shell that stops it when its stdin closes: when this broker is
        // dropped, and also when the test process ends without dropping it (a static, a
        // crash). The shell exits when tansu does.
        let process = Command::new("sh")
            .args(["-c", WATCHED, "sh", "broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start the tansu Kafka broker ({error}); install it with `{TANSU_INSTALL}` or set ESH_TEST_KAFKA=host:port")
            });
        let mut broker = KafkaBroker { address: format!("127.0.0.1:{port}"), process: Some(process) };
        let target: SocketAddr = broker.address.parse().expect("loopback address");
        let started = Instant::now();
        let exited = |broker: &mut KafkaBroker| matches!(broker.process.as_mut().map(Child::try_wait), Some(Ok(Some(_))));
        while TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_err() {
            if exited(&mut broker) {
                return None;
            }
            assert!(
                started.elapsed() < START_PATIENCE,
                "tansu did not listen on {} within {START_PATIENCE:?}",
                broker.address
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // What answered may be another process on the port tansu failed to bind.
        std::thread::sleep(Duration::from_millis(100));
        (!exited(&mut broker)).then_some(broker)
    }

    /// The `ESH_LOG` URL of this broker.
    pub fn url(&self) -> String {
        format!("kafka://{}", self.address)
    }

    /// The librdkafka properties clients of this broker need: tansu 0.6.0 gives a produced
    /// batch of several records one offset (after 30 records in batches, every partition's
    /// high watermark reads 1), so that committed positions run past its end and records
    /// are redelivered or skipped; with one record a batch its offsets are Kafka's.
    pub fn client_properties(&self) -> Vec<(String, String)> {
        vec![("batch.num.messages".into(), "1".into())]
    }

    /// `client_properties` as the `ESH_KAFKA_*` variables of the `esh` binary.
    pub fn client_env(&self) -> Vec<(String, String)> {
        let variable = |property: &str| format!("ESH_KAFKA_{}", property.to_ascii_uppercase().replace('.', "_"));
        self.client_properties().into_iter().map(|(property, value)| (variable(&property), value)).collect()
    }
}

/// Runs `tansu "$@"` until the shell's stdin closes (an asynchronous list reads
/// /dev/null unless redirected, hence fd 3), and exits when tansu exits.
const WATCHED: &str = "exec 3<&0; tansu \"$@\" </dev/null & broker=$!; (read _ <&3; kill $broker 2>/dev/null) & wait $broker";

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            // Closing its stdin stops tansu, then the shell.
            drop(process.stdin.take());
            let _ = process.wait();
        }
    }
}
