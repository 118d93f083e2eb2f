//! The machine and the versions a run measured: CPUs, CPU model, memory, kernel, rustc,
//! RabbitMQ, the commit (and whether the tree had uncommitted changes), and when the
//! worker binary was built.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub date: String,
    pub nproc: usize,
    pub cpu: String,
    pub memory: String,
    pub kernel: String,
    pub rustc: String,
    pub rabbitmq: String,
    pub commit: String,
    pub worker_bin: String,
    pub worker_built: String,
}

fn command(program: &str, args: &[&str], dir: Option<&Path>) -> Option<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn timestamp(t: std::time::SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339)
        .map(|s| s.chars().take(19).collect::<String>().replace('T', " ") + " UTC")
        .unwrap_or_default()
}

impl Machine {
    /// Reads it all; what cannot be read is `unknown`.
    pub fn describe(root: &Path, worker_bin: &Path) -> Machine {
        let unknown = || "unknown".to_string();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(unknown);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let kib: u64 = m
                    .lines()
                    .find(|l| l.starts_with("MemTotal:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some(format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
            })
            .unwrap_or_else(unknown);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| unknown());
        let rabbitmq = command("rabbitmqctl", &["version"], None)
            .map(|v| format!("RabbitMQ {v}"))
            .or_else(|| command("rabbitmq-diagnostics", &["server_version", "--quiet"], None))
            .unwrap_or_else(unknown);
        let commit = match command("git", &["rev-parse", "--short", "HEAD"], Some(root)) {
            Some(c) => {
                let dirty = command(
                    "git",
                    &["status", "--porcelain", "--untracked-files=no"],
                    Some(root),
                )
                .is_some_and(|s| !s.is_empty());
                if dirty {
                    format!("{c} (with uncommitted changes)")
                } else {
                    c
                }
            }
            None => unknown(),
        };
        let worker_built = std::fs::metadata(worker_bin)
            .and_then(|m| m.modified())
            .map(timestamp)
            .unwrap_or_else(|_| unknown());
        Machine {
            date: timestamp(std::time::SystemTime::now()),
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu,
            memory,
            kernel,
            rustc: command("rustc", &["--version"], None).unwrap_or_else(unknown),
            rabbitmq,
            commit,
            worker_bin: worker_bin
                .strip_prefix(root)
                .unwrap_or(worker_bin)
                .display()
                .to_string(),
            worker_built,
        }
    }

    /// Rows for the report.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CPUs (nproc)", self.nproc.to_string()),
            ("CPU model", self.cpu.clone()),
            ("memory", self.memory.clone()),
            ("kernel", self.kernel.clone()),
            ("rustc", self.rustc.clone()),
            ("broker", self.rabbitmq.clone()),
            ("commit", self.commit.clone()),
            (
                "worker binary",
                format!("`{}` (built {})", self.worker_bin, self.worker_built),
            ),
        ]
    }
}
