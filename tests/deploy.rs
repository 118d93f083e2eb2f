//! The deployment files keep the worker unprivileged: the image's worker stage runs as
//! a non-root user, Kubernetes refuses root and escalation, systemd runs it as its own
//! user. (No Docker engine runs where the tests run, so the files are checked as text;
//! `deploy/README.md` says what was validated with real tools.)

use dtrust_testkit::process::workspace_root;

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_image_runs_the_worker_as_a_non_root_user() {
    let dockerfile = read("deploy/Dockerfile");
    let worker_stage = dockerfile
        .split("\nFROM ")
        .find(|stage| stage.contains(" AS worker"))
        .expect("a `worker` stage");
    let user = worker_stage
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("the worker stage sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid != "0" && uid != "root" && !uid.is_empty(),
        "USER {user}"
    );
    assert!(worker_stage.contains("ENTRYPOINT [\"dtrust-worker\"]"));
}

#[test]
fn kubernetes_refuses_root_and_escalation() {
    let manifest = read("deploy/kubernetes/statefulset.yaml");
    for needle in [
        "runAsNonRoot: true",
        "allowPrivilegeEscalation: false",
        "readOnlyRootFilesystem: true",
        "path: /readyz",
        "path: /healthz",
    ] {
        assert!(
            manifest.contains(needle),
            "statefulset.yaml lacks `{needle}`"
        );
    }
    assert!(!manifest.contains("runAsUser: 0"));
}

#[test]
fn systemd_runs_it_as_its_own_user() {
    let unit = read("deploy/systemd/dtrust-worker.service");
    let user = unit
        .lines()
        .find_map(|l| l.strip_prefix("User="))
        .expect("User=");
    assert_ne!(user.trim(), "root");
    assert!(unit.contains("NoNewPrivileges=yes") || unit.contains("NoNewPrivileges=true"));
}
