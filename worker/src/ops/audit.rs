//! The audit trail: every state change of a job is one structured log event (target
//! `audit`) with the job id, kind, product, order id, serial and outcome, so an auditor
//! can reconstruct who asked for what and what D-Trust answered. No secret is in it:
//! the fields are taken from the record one by one, never the whole job.

use tracing::info;

use crate::job::model::{Job, Status};
use crate::job::record::{Record, State};

/// The event name of a transition, if it is one worth recording.
fn event(before: Option<&Record>, after: &Record) -> Option<&'static str> {
    let from = before.map(|r| r.state);
    if from == Some(after.state) {
        return None;
    }
    Some(match after.state {
        State::Ready if from.is_none() => "received",
        State::Ready => "scheduled",
        State::InFlight => match after.job {
            Job::Issue(_) => "ordering",
            Job::Revoke(_) => "revoking",
        },
        State::Pending => "pending",
        State::AwaitingCm => "awaiting_certificate_manager",
        State::Finished => match (&after.job, after.result.as_ref().map(|r| r.status)) {
            (Job::Issue(j), Some(Status::Succeeded)) if j.key_archive => "issued_and_archived",
            (Job::Issue(_), Some(Status::Succeeded)) => "issued",
            (Job::Revoke(_), Some(Status::Succeeded)) => "revoked",
            _ => "failed",
        },
        State::Delivered => "delivered",
    })
}

/// Records the change from `before` to `after`, if it is a state change.
pub fn record(before: Option<&Record>, after: &Record) {
    let Some(event) = event(before, after) else {
        return;
    };
    let product = match &after.job {
        Job::Issue(j) => j.product.as_str(),
        Job::Revoke(_) => "",
    };
    let result = after.result.as_ref();
    info!(
        target: "audit",
        event,
        job_id = %after.job_id,
        kind = after.kind.as_str(),
        product,
        client_reference = %after.client_reference,
        order_id = after.order_id.as_deref().unwrap_or(""),
        serial = result.and_then(|r| r.serial.as_deref()).unwrap_or(""),
        status = result.map(|r| r.status.as_str()).unwrap_or(""),
        code = result.and_then(|r| r.error.as_ref()).map(|e| e.code.as_str()).unwrap_or(""),
        attempts = after.attempts,
        "job {event}"
    );
}
