//! Measuring Esh3ar: the load generator `esh-load` (src/bin/esh-load, drives a running
//! deployment through its public HTTP and WebSocket contract only) and the Criterion
//! micro-benchmarks of the hot paths (benches/). This library holds their shared fixtures.
