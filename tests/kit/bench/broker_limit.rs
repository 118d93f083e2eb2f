//! Figure 1, the broker limit: a minimal lapin program that does what the worker does
//! with a job minus the work. It consumes `{p}.issue` (the worker's quorum queue,
//! declared by the worker's own topology code) on a channel with the worker's prefetch
//! (the issue concurrency) and manual acks, and for each delivery publishes a result of
//! the worker's size to `{p}.results` (persistent, `mandatory`, confirmed, on one
//! channel shared by all deliveries, as the worker's publisher is), then acks. The queue
//! is filled with N job messages first (PKCS#10 jobs of about 1.5 KB); the figure is the
//! rate at which the results arrive at the harness while the queue drains.

use std::time::Instant;

use dtrust_worker::transport::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use dtrust_worker::transport::lapin::types::FieldTable;
use dtrust_worker::transport::lapin::{BasicProperties, Connection, ConnectionProperties};
use dtrust_worker::transport::{CancellationToken, Names};
use futures_util::StreamExt;
use serde_json::json;

use super::harness::{check, round1, Bus, Cpu, Ctx, Rate, RESULT_TIMEOUT};
use super::report::Figure;
use crate::broker::{amqp_url, unique_prefix};

/// A result message of `size` bytes shaped like the worker's.
pub fn result_body(job_id: &str, size: usize) -> Vec<u8> {
    let base = json!({
        "job_id": job_id, "kind": "issue", "status": "succeeded", "attempts": 1,
        "serial": "0123456789ABCDEF0123456789ABCDEF", "order_id": "ord-000000-1",
        "revocation_password": "Generated-password-123", "certificate_pem": ""
    });
    let empty = serde_json::to_vec(&base).unwrap_or_default().len();
    let mut body = base;
    body["certificate_pem"] = json!("A".repeat(size.saturating_sub(empty)));
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The minimal consumer: runs until `stop`, returns how many deliveries it settled.
pub async fn minimal_consumer(
    names: Names,
    prefetch: u16,
    result_bytes: usize,
    stop: CancellationToken,
) -> Result<(), String> {
    let e = |what: &'static str| {
        move |e: dtrust_worker::transport::lapin::Error| format!("{what}: {e}")
    };
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .map_err(e("connect"))?;
    let consume = connection.create_channel().await.map_err(e("channel"))?;
    consume
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await
        .map_err(e("basic.qos"))?;
    let publish = connection.create_channel().await.map_err(e("channel"))?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(e("confirm.select"))?;
    let mut consumer = consume
        .basic_consume(
            names.issue.as_str().into(),
            "bench-minimal".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(e("basic.consume"))?;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = consumer.next() => next,
        };
        let Some(Ok(delivery)) = next else { break };
        let publish = publish.clone();
        let exchange = names.results.clone();
        tokio::spawn(async move {
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default();
            let body = result_body(&id, result_bytes);
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(id.as_str().into());
            let confirmed = match publish
                .basic_publish(
                    exchange.as_str().into(),
                    "result.issue.succeeded".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &body,
                    properties,
                )
                .await
            {
                Ok(confirm) => check(confirm.await).is_ok(),
                Err(_) => false,
            };
            if confirmed {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            } else {
                let _ = delivery
                    .acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await;
            }
        });
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Measures figure 1.
pub async fn run(ctx: &Ctx) -> Result<Figure, String> {
    let p = &ctx.params;
    let n = p.drain_jobs;
    let prefix = unique_prefix("bench-broker");
    let mut bus = Bus::start(&prefix).await?;
    ctx.progress(&format!("figure 1: queueing {n} jobs"));
    bus.publish_many("issue", n, |i| {
        let id = format!("job-{i:06}");
        let body = ctx.jobs.issue(&id);
        (id, body)
    })
    .await?;
    let job_bytes = ctx.jobs.issue("job-000000").len();
    ctx.progress("figure 1: draining with the minimal consumer");
    let stop = CancellationToken::new();
    let cpu0 = Cpu::now(None);
    let start = Instant::now();
    let consumer = tokio::spawn(minimal_consumer(
        bus.names.clone(),
        p.issue_concurrency,
        p.result_bytes,
        stop.clone(),
    ));
    let waited = bus.wait_results(n, RESULT_TIMEOUT).await;
    let cpu = Cpu::now(None).since(&cpu0);
    stop.cancel();
    let ended = consumer.await.map_err(|e| format!("consumer task: {e}"))?;
    waited?;
    ended?;
    bus.failures()?;
    let times: Vec<Instant> = bus.all.iter().map(|a| a.at).collect();
    let rate = Rate::of(&times, start);
    let result_bytes = bus.all.first().map(|a| a.bytes).unwrap_or(0);
    let (_, cpu_json) = cpu.per_job(n);
    let cpu_text = format!(
        "CPU ms/job: broker {:.2}, the minimal consumer and the harness {:.2}",
        cpu.broker * 1000.0 / n as f64,
        cpu.harness * 1000.0 / n as f64
    );

    let mut f = Figure::new(1, "broker limit");
    f.line = format!(
        "{:.0} jobs/s (minimal lapin consumer, N={n}, prefetch {}, job {} B, result {} B; whole drain {:.0}/s in {:.1} s; {cpu_text})",
        rate.steady, p.issue_concurrency, job_bytes, result_bytes, rate.overall, rate.seconds
    );
    f.parameters = format!(
        "{n} PKCS#10 job messages ({job_bytes} B) queued in `{{p}}.issue` (quorum queue), then drained by a lapin consumer with prefetch {} that publishes a {result_bytes} B result per job (persistent, mandatory, confirmed, one publishing channel) and acks after the confirm. Rate = results arriving at the harness between the 10 % and the 90 % result.",
        p.issue_concurrency
    );
    f.set("jobs_per_s", round1(rate.steady));
    f.set("overall_jobs_per_s", round1(rate.overall));
    f.set("seconds", round1(rate.seconds));
    f.set("n", n);
    f.set("prefetch", p.issue_concurrency);
    f.set("job_bytes", job_bytes);
    f.set("result_bytes", result_bytes);
    f.set("cpu_ms_per_job", cpu_json);
    Ok(f)
}
