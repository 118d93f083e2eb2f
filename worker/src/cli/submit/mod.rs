//! `dtrust-worker submit --file jobs.ndjson|jobs.csv`: publishes a batch of jobs to a
//! running worker and collects their results.
//!
//! 1. **Read and check everything first.** Every line (NDJSON) or row (CSV, see
//!    [`csv_row`]) becomes a job message and is validated with
//!    [`Schemas::parse_job`], as the worker will; a `job_id` used twice in the file is
//!    refused on its later lines. A line that fails is reported with its number and
//!    what is wrong (never its values: it may hold a revocation password) and is
//!    skipped whole: a line is published entirely or not at all.
//! 2. **Resume.** With `--out FILE`, jobs whose `job_id` already has a result in FILE
//!    are skipped. Publishing a job again that an interrupted run had already
//!    published is safe: the worker keys everything on `job_id` and never orders it
//!    twice; it answers a repeated job with the stored result.
//! 3. **Publish** to `{p}.jobs` with routing key = `kind`, persistent, `message_id` =
//!    `job_id`, `mandatory`, through the worker's confirming [`Publisher`]
//!    (pipelined): a job counts as submitted only once the broker confirmed it and a
//!    queue took it.
//! 4. **Collect results** (unless `--no-wait`) from an exclusive queue bound to
//!    `{p}.results` before the first publish (see [`broker`] for why not
//!    `reply_to`), keeping the results of this batch's job ids only; each is appended
//!    to FILE and flushed as it arrives. Progress is shown on standard error
//!    ([`progress`]).
//! 5. **Report** (standard output) counts per status and error code, and what is
//!    missing. Exit code 0 when every submitted job has its outcome (failed ones
//!    too), 1 when lines were skipped as malformed, jobs could not be submitted or
//!    results are missing at `--timeout-secs`, 2 for usage errors (nothing published).

mod broker;
mod csv_row;
mod input;
mod outfile;
mod progress;
mod summary;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::job::schema::Schemas;
use crate::transport::{Names, Outgoing, PublishError, Published};

use self::broker::Session;
pub use self::input::Format;
use self::input::Prepared;
use self::outfile::ResultsFile;
use self::progress::{Counts, Progress};
use self::summary::{Report, Tally};

/// Publishes in flight at once (the publisher pipelines them on one channel).
const WINDOW: usize = 256;
/// Bound on one publish, from the call to the broker's confirm.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// The settings of `submit`; each also as an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// The batch: NDJSON (one job object per line) or CSV (a header row naming job
    /// fields: job_id, kind, product, request_type, csr_file, csr_pem, cn, o, ou, c, l,
    /// st, email, serial_number, organization_identifier, given_name, surname, san_dns,
    /// san_email, san_upn, revocation_password, key_archive, serial, order_id, reason,
    /// metadata.<name>).
    #[arg(long, env = "DTRUST_SUBMIT_FILE")]
    pub file: PathBuf,
    /// The file's format; default: by its extension (.csv; .ndjson, .jsonl, .json).
    #[arg(long, value_enum, env = "DTRUST_SUBMIT_FORMAT")]
    pub format: Option<Format>,
    /// Append results here, one JSON object per line, as they arrive; a re-run skips
    /// the jobs that have a result in it. Created readable by its owner only (results
    /// carry secrets).
    #[arg(long, env = "DTRUST_SUBMIT_OUT")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub broker: super::BrokerArgs,
    /// Seconds to wait for results after the last job was published.
    #[arg(long, env = "DTRUST_SUBMIT_TIMEOUT_SECS", default_value_t = 3600)]
    pub timeout_secs: u64,
    /// Publish (each confirmed) and exit without waiting for results.
    #[arg(long, env = "DTRUST_SUBMIT_NO_WAIT")]
    pub no_wait: bool,
}

/// A problem with the command line or its files: nothing was published (exit 2).
fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// Runs `submit`; the report goes to `out`, diagnostics and progress to standard error.
pub(super) fn run(args: SubmitArgs, out: &mut dyn Write) -> std::io::Result<ExitCode> {
    let Some(format) = args.format.or_else(|| Format::by_extension(&args.file)) else {
        return Ok(usage(format_args!(
            "cannot tell the format of `{}` by its extension: name it .csv or .ndjson (.jsonl, .json), or pass --format csv|ndjson",
            args.file.display()
        )));
    };
    if let Some(results) = &args.out {
        if same_file(results, &args.file) {
            return Ok(usage(format_args!(
                "--out `{}` is the batch file itself: name another file for the results",
                results.display()
            )));
        }
    }
    let prefix = match prefix(&args) {
        Ok(prefix) => prefix,
        Err(code) => return Ok(code),
    };
    let schemas = match Schemas::load() {
        Ok(schemas) => schemas,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let batch = match input::read(&args.file, format, &schemas) {
        Ok(batch) => batch,
        Err(e) if e.is_usage() => return Ok(usage(format_args!("{e}; nothing was published"))),
        Err(e) => {
            eprintln!("error: {e}; nothing was published");
            return Ok(ExitCode::FAILURE);
        }
    };
    for m in &batch.malformed {
        eprintln!("line {}: skipped: {}", m.line, m.reason);
    }
    let done = match &args.out {
        Some(path) => match outfile::read_done(path) {
            Ok(done) => done,
            Err(e) => {
                return Ok(usage(format_args!(
                    "cannot read the results file `{}`: {e}",
                    path.display()
                )))
            }
        },
        None => outfile::Done::default(),
    };
    if done.unreadable > 0 {
        eprintln!(
            "warning: {} line(s) of the results file are not results (cut short?); they are ignored",
            done.unreadable
        );
    }
    let (jobs, skipped): (Vec<Prepared>, Vec<Prepared>) = batch
        .jobs
        .into_iter()
        .partition(|job| !done.ids.contains(&job.job_id));
    if !skipped.is_empty() {
        eprintln!(
            "skipping {} job(s) whose results are already in the results file",
            skipped.len()
        );
    }
    let wait = !args.no_wait;
    let mut report = Report {
        skipped_done: skipped.len(),
        malformed: batch.malformed.iter().map(|m| m.line).collect(),
        waited: wait,
        timeout_secs: args.timeout_secs,
        out: args.out.clone(),
        ..Report::default()
    };
    let results_file = match (&args.out, wait) {
        (Some(path), true) => match ResultsFile::open(path) {
            Ok(file) => Some(file),
            Err(e) => {
                return Ok(usage(format_args!(
                    "cannot open the results file `{}`: {e}",
                    path.display()
                )))
            }
        },
        _ => None,
    };
    if !jobs.is_empty() {
        let runtime = super::runtime()?;
        let names = Names::new(&prefix);
        match runtime.block_on(submit(&args, &names, jobs, results_file, &mut report)) {
            Ok(()) => {}
            Err(broker::BrokerError::Config(e)) => return Ok(usage(e)),
            Err(e) => {
                eprintln!("error: {e}; nothing was published");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    report.print(out)?;
    out.flush()?;
    Ok(report.exit_code())
}

/// `--prefix`, else the bundle's `amqp.prefix`, else `dtrust`; a bundle that cannot be
/// read is a usage error.
fn prefix(args: &SubmitArgs) -> Result<String, ExitCode> {
    args.broker.prefix().map_err(|(path, report)| {
        let mut text = Vec::new();
        let _ = super::check_config::print_report(&report, &mut text);
        eprint!("{}", String::from_utf8_lossy(&text));
        usage(format_args!(
            "the bundle `{}` cannot be used to find the prefix; pass --prefix instead",
            path.display()
        ))
    })
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// What the job ids of the batch have come to.
#[derive(Default)]
struct Books {
    /// Line of every job being submitted.
    lines: HashMap<String, usize>,
    /// Confirmed and routed.
    confirmed: HashSet<String>,
    /// Refused or failed publishes.
    refused: HashSet<String>,
    /// Result received.
    finished: HashSet<String>,
    /// Confirmed without a result yet.
    awaiting: usize,
}

/// Connects, publishes `jobs`, collects their results into `results_file` and
/// `report`. An error means nothing was published.
async fn submit(
    args: &SubmitArgs,
    names: &Names,
    jobs: Vec<Prepared>,
    mut results_file: Option<ResultsFile>,
    report: &mut Report,
) -> Result<(), broker::BrokerError> {
    let wait = !args.no_wait;
    let mut session =
        Session::open(&args.broker.amqp.amqp_url, names, wait, PUBLISH_TIMEOUT).await?;
    let total = jobs.len();
    let mut books = Books {
        lines: jobs.iter().map(|j| (j.job_id.clone(), j.line)).collect(),
        ..Books::default()
    };
    let mut progress = Progress::new(total as u64, wait);
    progress.say(&format!(
        "publishing {total} job(s) to {}{}",
        names.jobs,
        if wait {
            format!(", collecting results from {}", names.results)
        } else {
            String::new()
        }
    ));
    let publisher = session.publisher.clone();
    let exchange = names.jobs.clone();
    let mut publishes = futures_util::stream::iter(jobs.into_iter().map(move |job| {
        let publisher = publisher.clone();
        let message = Outgoing::new(exchange.clone(), job.kind.as_str(), job.body)
            .with_timestamp_now()
            .with_message_id(job.job_id.clone());
        async move { (job.job_id, publisher.publish(message).await) }
    }))
    .buffer_unordered(WINDOW);

    let mut tally = Tally::default();
    let mut not_submitted: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut publishing = true;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut stopped: Option<String> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut ctrl_c_usable = true;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let counts = |books: &Books, tally: &Tally| Counts {
        total: total as u64,
        submitted: books.confirmed.len() as u64,
        finished: tally.finished(),
        succeeded: tally.succeeded,
        failed: tally.failed,
    };

    loop {
        if !publishing && (!wait || books.awaiting == 0) {
            break;
        }
        tokio::select! {
            signal = &mut ctrl_c, if ctrl_c_usable => {
                ctrl_c_usable = false;
                if signal.is_ok() {
                    stopped = Some("interrupted (Ctrl-C)".into());
                    break;
                }
            }
            published = publishes.next(), if publishing => match published {
                Some((job_id, outcome)) => {
                    on_published(&mut books, &mut not_submitted, &progress, job_id, outcome);
                    progress.show(counts(&books, &tally), false);
                }
                None => {
                    publishing = false;
                    progress.show(counts(&books, &tally), true);
                    if wait && !books.confirmed.is_empty() {
                        deadline = tokio::time::Instant::now()
                            .checked_add(Duration::from_secs(args.timeout_secs));
                        progress.say(&format!(
                            "{} job(s) confirmed by the broker; waiting for their results (at most {} s)",
                            books.confirmed.len(),
                            args.timeout_secs
                        ));
                    }
                }
            },
            delivery = next_result(&mut session.results) => match delivery {
                Some(Ok(delivery)) => {
                    if let Err(e) = on_result(&mut books, &mut tally, results_file.as_mut(), &delivery.data) {
                        stopped = Some(e);
                        break;
                    }
                    progress.show(counts(&books, &tally), false);
                }
                Some(Err(e)) => {
                    stopped = Some(format!("the results queue failed: {e}"));
                    break;
                }
                None => {
                    stopped = Some("the broker connection was lost while waiting for results".into());
                    break;
                }
            },
            () = until(deadline) => break,
            _ = ticker.tick() => progress.show(counts(&books, &tally), false),
        }
    }
    drop(publishes);
    progress.show(counts(&books, &tally), true);
    progress.finish();
    session.close().await;

    let mut missing: Vec<(usize, String)> = books
        .confirmed
        .iter()
        .filter(|id| !books.finished.contains(*id))
        .map(|id| (books.lines.get(id).copied().unwrap_or(0), id.clone()))
        .collect();
    missing.sort();
    let mut unconfirmed: Vec<usize> = books
        .lines
        .iter()
        .filter(|(id, _)| !books.confirmed.contains(*id) && !books.refused.contains(*id))
        .map(|(_, line)| *line)
        .collect();
    unconfirmed.sort_unstable();
    for lines in not_submitted.values_mut() {
        lines.sort_unstable();
    }
    report.submitted = books.confirmed.len();
    report.not_submitted = not_submitted;
    report.unconfirmed = unconfirmed;
    report.missing = if wait { missing } else { Vec::new() };
    report.tally = tally;
    report.stopped = stopped;
    Ok(())
}

/// Books one publish's outcome.
fn on_published(
    books: &mut Books,
    not_submitted: &mut BTreeMap<String, Vec<usize>>,
    progress: &Progress,
    job_id: String,
    outcome: Result<Published, PublishError>,
) {
    let line = books.lines.get(&job_id).copied().unwrap_or(0);
    let reason = match outcome {
        Ok(Published::Routed) => {
            if !books.finished.contains(&job_id) {
                books.awaiting += 1;
            }
            books.confirmed.insert(job_id);
            return;
        }
        Ok(Published::Returned { .. }) => {
            "no queue is bound for its kind on the job exchange (is the worker's topology declared for this prefix?)".to_owned()
        }
        Err(e) if e.may_have_been_published() => {
            format!("{e} (it may still arrive)")
        }
        Err(e) => e.to_string(),
    };
    if not_submitted.get(&reason).is_none_or(Vec::is_empty) {
        progress.say(&format!(
            "line {line}: not submitted: {reason} (job_id `{job_id}`)"
        ));
    }
    not_submitted.entry(reason).or_default().push(line);
    books.refused.insert(job_id);
}

/// Books one message from the results queue; results of other job ids (other
/// producers, or jobs skipped as done) and repeats are dropped. An error means the
/// results file cannot be written.
fn on_result(
    books: &mut Books,
    tally: &mut Tally,
    results_file: Option<&mut ResultsFile>,
    body: &[u8],
) -> Result<(), String> {
    let Ok(result) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    let Some(job_id) = result.get("job_id").and_then(Value::as_str) else {
        return Ok(());
    };
    if !books.lines.contains_key(job_id) || books.finished.contains(job_id) {
        return Ok(());
    }
    if let Some(file) = results_file {
        file.append(&result).map_err(|e| {
            format!(
                "cannot write the results file `{}`: {e}",
                file.path().display()
            )
        })?;
    }
    tally.add(&result);
    if books.confirmed.contains(job_id) {
        books.awaiting = books.awaiting.saturating_sub(1);
    }
    books.finished.insert(job_id.to_owned());
    Ok(())
}

/// The next message of the results queue; never, when there is none.
async fn next_result(
    results: &mut Option<lapin::Consumer>,
) -> Option<Result<lapin::message::Delivery, lapin::Error>> {
    match results {
        Some(consumer) => consumer.next().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`; never, without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
