//! dtrust-worker: issues and revokes certificates at D-Trust (the Bundesdruckerei CA)
//! for identity-management systems, from jobs on RabbitMQ.
//!
//! | module | owns |
//! |---|---|
//! | [`bundle`] | the connector bundle: zip, `dtrust.properties`, keystore, server trust, validation |
//! | [`cli`] | the `dtrust-worker` verbs |
//! | [`dtrust`] | the D-Trust REST client, its errors and the products' rules |
//! | [`engine`] | what the worker does with each job: deliveries, steps, results, the schedule |
//! | [`job`] | jobs and results: messages, validation, state machine |
//! | [`keyarchive`] | key archival through a Certificate Manager: the messages and their rules |
//! | [`ops`] | logging (and later metrics, health, audit) |
//! | [`store`] | the job store (sled): one record per job, compare-and-swap, the schedule |
//! | [`retry`] | the retry policy: exponential backoff with jitter, attempt limit |
//! | [`secret`] | types that hold passwords and keys without ever printing them |

pub mod bundle;
pub mod cli;
pub mod dtrust;
pub mod engine;
pub mod job;
pub mod keyarchive;
pub mod ops;
pub mod retry;
pub mod secret;
pub mod store;
pub mod transport;
