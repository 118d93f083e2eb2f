//! The benchmark harness (`dtrust-bench`, `make bench`): how close the worker comes to
//! the limits set by RabbitMQ and by D-Trust, measured as ratios taken in one run, so
//! that the figures hold on a noisy machine (issue 7).
//!
//! Everything runs against the real broker (`AMQP_URL`, default the local RabbitMQ) and
//! an in-process D-Trust simulator ([`crate::sim::Sim`]); the worker is the real
//! `dtrust-worker run` process of the release build. Each figure has a prefix of its own
//! and deletes its queues and exchanges when done (also when it fails).
//!
//! | figure | module | measures |
//! |---|---|---|
//! | 1 | [`broker_limit`] | a minimal lapin consumer doing what the worker does minus the work: jobs/s |
//! | 2 | [`worker_overhead`] | the worker end to end, simulator latency 0: jobs/s, ratio to 1 |
//! | 3 | [`latency_hiding`] | simulator latency 200 ms, concurrency 64: jobs/s, ratio to 64 / 0.2 s |
//! | 4 | [`synchronous`] | the same with concurrency 1: jobs/s, ratio of 3 to it |
//! | 5 | [`revocation_backlog`] | publish-to-result p50/p99 of 100 revocations behind an issuance backlog, ratio to idle |
//! | 6 | [`memory`] | peak RSS while draining a backlog, RSS at 25/50/100 %, store size before/after purge |
//! | 7 | [`rate_limit`] | D-Trust request rate the simulator sees with `maxRequestsPerSecond` 50 |
//! | 8 | [`several_workers`] | jobs/s with 1, 2 and 3 workers on one prefix at latency 200 ms, ratio to one; the lease's cost |
//!
//! [`profile`] profiles the worker during a figure-2 drain (`perf record`, `perf trace
//! -s`); [`report`] prints the lines and writes `BENCHMARKS.md`; [`machine`] describes
//! the machine and the versions; [`harness`] holds what the figures share (parameters,
//! jobs, the bus, the worker process, CPU and memory readings).
//!
//! The harness never asserts timing: it prints what it measured. A figure fails only
//! when it could not run (no broker, a worker that does not start, results that do not
//! arrive, jobs that fail).

pub mod broker_limit;
pub mod harness;
pub mod latency_hiding;
pub mod machine;
pub mod memory;
pub mod profile;
pub mod rate_limit;
pub mod report;
pub mod revocation_backlog;
pub mod several_workers;
pub mod synchronous;
pub mod worker_overhead;

pub use harness::{Ctx, Params};
pub use report::Figure;
