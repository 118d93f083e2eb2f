//! The `dtrust-worker` binary, run as operators run it. It is built once per test
//! process (a no-op when `make test` built it already); `DTRUST_WORKER_BIN` points
//! to another build.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of the `dtrust-worker` binary, building it first if needed.
pub fn worker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("DTRUST_WORKER_BIN") {
            return PathBuf::from(bin);
        }
        let root = workspace_root();
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--quiet",
                "-p",
                "dtrust-worker",
                "--bin",
                "dtrust-worker",
            ])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of dtrust-worker failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("debug").join("dtrust-worker")
    })
    .clone()
}

/// Runs `dtrust-worker ARGS` with a clean `DTRUST_*` environment plus `env`.
pub fn run_worker(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(worker_bin());
    cmd.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("DTRUST_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run dtrust-worker")
}

/// Standard output and error of a run, as one text for assertions and failure messages.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A `dtrust-worker run` process, its output kept in a log file.
pub struct WorkerProcess {
    child: std::process::Child,
    pub log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl WorkerProcess {
    /// Starts `dtrust-worker run ARGS` with `env` (and a clean `DTRUST_*` environment);
    /// `log` collects standard output and error (appended across restarts).
    pub fn start(args: &[&str], env: &[(&str, &str)], log: &Path) -> WorkerProcess {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = spawn(&args, &env, log);
        WorkerProcess {
            child,
            log: log.to_path_buf(),
            args,
            env,
        }
    }

    /// SIGKILL, as a crash: nothing is flushed or closed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.kill();
        false
    }

    /// Starts the same command again (after `kill` or `terminate`).
    pub fn restart(&mut self) {
        self.child = spawn(&self.args, &self.env, &self.log);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(args: &[String], env: &[(String, String)], log: &Path) -> std::process::Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open worker log");
    let mut cmd = Command::new(worker_bin());
    cmd.arg("run").args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("DTRUST_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(file.try_clone().expect("log handle"))
        .stderr(file);
    cmd.spawn().expect("start dtrust-worker run")
}
