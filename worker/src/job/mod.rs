//! Jobs: their messages, validation, and the state each job goes through.
//!
//! | module | owns |
//! |---|---|
//! | [`model`] | job and result messages as the AMQP contract defines them |
//! | [`schema`] | validation of every received message against `schemas/` |
//! | [`password`] | revocation passwords: generated to fit a product, or derived from the CN |
//! | [`record`] | the stored state of one job |

pub mod model;
pub mod password;
pub mod record;
pub mod schema;
