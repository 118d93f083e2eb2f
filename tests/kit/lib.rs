//! The test kit of dtrust-worker: what the integration tests and the demo are built
//! from. It is not part of the product: the worker never depends on it.
//!
//! | module | gives |
//! |---|---|
//! | [`bench`] | the benchmark harness of `dtrust-bench` (`make bench`): one module per figure, the report |
//! | [`broker`] | the shared RabbitMQ: unique prefixes, the job bus (publish jobs, collect results), cleanup |
//! | [`pki`] | real CAs, certificates, keys and PKCS#12 keystores made at test time |
//! | [`bundle`] | connector bundles, valid or wrong in one chosen way |
//! | [`cm`] | the Certificate Manager simulator: consumes the key-archive requests, really generates keys and CSRs, archives dummy and imported certificates, fails or stays silent on demand |
//! | [`container`] | RabbitMQ brokers of the tests' own in Docker (testcontainers): one node or a cluster of three, restarts, kills, pauses, alarms; a bus that survives them |
//! | [`demo`] | the demo's mixed batch of jobs and its results table |
//! | [`hostile`] | zips built to attack a reader: bombs, traversal, links, floods |
//! | [`proxy`] | an HTTP CONNECT proxy with optional Basic authentication |
//! | [`rng`] | a seeded generator for reproducible fuzz, chaos and hostile-input runs |
//! | [`process`] | the `dtrust-worker` binary, built once and run as operators run it |
//! | [`sim`] | the D-Trust simulator: the REST interface over mutual TLS, its validation rules, real issuance, fault injection |
//! | [`tcp_proxy`] | a TCP proxy on 127.0.0.1 that cuts and restores connections (worker ↔ broker) |

pub mod bench;
pub mod broker;
pub mod bundle;
pub mod cm;
pub mod container;
pub mod demo;
pub mod hostile;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod rng;
pub mod sim;
pub mod tcp_proxy;
