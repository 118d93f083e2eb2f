//! RabbitMQ nodes in containers: one [`Broker`], or a [`Cluster`] of three.
//!
//! Every container uses host networking (no Docker network is made) with ports of its
//! own on 127.0.0.1: AMQP, Erlang distribution, the CLI tools' distribution port, and
//! an epmd of its own (the machine's RabbitMQ holds node name `rabbit` on the default
//! epmd). A cluster's nodes share one epmd, run in a container of its own so that
//! stopping a node leaves the others reachable.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use dtrust_worker::transport::lapin::{Connection, ConnectionProperties};
use testcontainers::core::{CmdWaitFor, ExecCommand, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::{engine, image, LABEL};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// How long a node may take to start (a cold start is about 5 s here).
const STARTUP: Duration = Duration::from_secs(120);

/// One RabbitMQ node in a container of its own.
pub struct Broker {
    container: ContainerAsync<GenericImage>,
    /// The AMQP port on 127.0.0.1.
    pub port: u16,
    /// Its Erlang node name, e.g. `dt-41234@localhost`.
    pub node: String,
    /// The cluster's Erlang cookie (a single node makes its own).
    cookie: Option<String>,
}

/// What a node is started with.
struct NodeSpec {
    test: String,
    epmd_port: u16,
    cookie: Option<String>,
}

impl Broker {
    /// A fresh broker for `test`, with its own epmd; ready when it returns.
    pub async fn start(test: &str) -> Broker {
        Broker::start_node(NodeSpec {
            test: test.to_string(),
            epmd_port: free_port(),
            cookie: None,
        })
        .await
    }

    async fn start_node(spec: NodeSpec) -> Broker {
        engine::ensure();
        let (name, tag) = image();
        let port = free_port();
        let dist_port = free_port();
        let ctl_port = free_port();
        let node = format!("dt-{port}@localhost");
        let request = GenericImage::new(name.clone(), tag.clone())
            .with_wait_for(WaitFor::message_on_stdout("Server startup complete"))
            .with_network("host")
            .with_label(LABEL, spec.test.as_str())
            .with_container_name(format!("dtrust-test-{}-{port}", sanitize(&spec.test)))
            .with_env_var("RABBITMQ_NODENAME", node.as_str())
            .with_env_var("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .with_env_var("RABBITMQ_NODE_PORT", port.to_string())
            .with_env_var("RABBITMQ_DIST_PORT", dist_port.to_string())
            .with_env_var("RABBITMQ_CTL_DIST_PORT_MIN", ctl_port.to_string())
            .with_env_var("RABBITMQ_CTL_DIST_PORT_MAX", ctl_port.to_string())
            .with_env_var("ERL_EPMD_PORT", spec.epmd_port.to_string())
            .with_env_var("ERL_EPMD_ADDRESS", "127.0.0.1")
            // Distribution only on 127.0.0.1 too; a cluster's cookie on the command
            // line (the cookie variable is deprecated).
            .with_env_var(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                match &spec.cookie {
                    Some(cookie) => {
                        format!("-kernel inet_dist_use_interface {{127,0,0,1}} -setcookie {cookie}")
                    }
                    None => "-kernel inet_dist_use_interface {127,0,0,1}".to_string(),
                },
            )
            .with_env_var("RABBITMQ_LOGS", "-")
            .with_startup_timeout(STARTUP);
        let container = request
            .start()
            .await
            .unwrap_or_else(|e| panic!("start a RabbitMQ container ({name}:{tag}): {e}"));
        let broker = Broker {
            container,
            port,
            node,
            cookie: spec.cookie,
        };
        broker.wait_ready().await;
        broker
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The AMQP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// Waits until an AMQP connection opens (after a start, restart or unpause).
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_secs(5),
                Connection::connect(&self.url(), ConnectionProperties::default()),
            )
            .await;
            if let Ok(Ok(connection)) = attempt {
                let _ = connection.close(200, "ready".into()).await;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "RabbitMQ {} did not accept AMQP connections within {STARTUP:?}",
                self.node
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the node as an operator would (SIGTERM, up to 30 s for a clean stop).
    pub async fn stop(&self) {
        self.container
            .stop_with_timeout(Some(30))
            .await
            .expect("stop the RabbitMQ container");
    }

    /// Starts it again after [`Broker::stop`] or [`Broker::kill`]; ready when it returns.
    pub async fn start_again(&self) {
        self.container
            .start()
            .await
            .expect("start the RabbitMQ container again");
        self.wait_ready().await;
    }

    /// Stops and starts it again.
    pub async fn restart(&self) {
        self.stop().await;
        self.start_again().await;
    }

    /// SIGKILL: the node dies without closing anything.
    pub async fn kill(&self) {
        engine::kill(self.container.id()).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.container.is_running().await.unwrap_or(false) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the killed container still runs"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Freezes every process of the node (the cgroup freezer): connections stay open
    /// but nothing answers, not even heartbeats.
    pub async fn pause(&self) {
        self.container
            .pause()
            .await
            .expect("pause the RabbitMQ container");
    }

    /// Thaws it after [`Broker::pause`].
    pub async fn unpause(&self) {
        self.container
            .unpause()
            .await
            .expect("unpause the RabbitMQ container");
    }

    /// Runs `rabbitmqctl ARGS` in the container; returns its exit code and output.
    pub async fn rabbitmqctl(&self, args: &[&str]) -> (i64, String) {
        let mut cmd = vec!["rabbitmqctl"];
        if let Some(cookie) = &self.cookie {
            cmd.extend_from_slice(&["--erlang-cookie", cookie.as_str()]);
        }
        cmd.extend_from_slice(args);
        self.exec(&cmd).await
    }

    /// Runs a command in the container; returns its exit code and output.
    pub async fn exec(&self, cmd: &[&str]) -> (i64, String) {
        let mut result = self
            .container
            .exec(
                ExecCommand::new(cmd.iter().copied()).with_cmd_ready_condition(CmdWaitFor::exit()),
            )
            .await
            .unwrap_or_else(|e| panic!("exec {cmd:?}: {e}"));
        let stdout = result.stdout_to_vec().await.unwrap_or_default();
        let stderr = result.stderr_to_vec().await.unwrap_or_default();
        let code = result.exit_code().await.ok().flatten().unwrap_or(-1);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
        (code, text)
    }

    /// Like [`Broker::rabbitmqctl`], failing the test when the command fails. A CLI
    /// whose own Erlang distribution could not start (its port taken for a moment by
    /// another test's container on this host network) never reached the node: that is
    /// tried again, a few times.
    pub async fn ctl(&self, args: &[&str]) -> String {
        let mut tries = 0;
        loop {
            let (code, text) = self.rabbitmqctl(args).await;
            tries += 1;
            let no_distribution = text.contains("not part of a distributed system")
                || text.contains("Distribution failed");
            if code != 0 && no_distribution && tries < 5 {
                tokio::time::sleep(std::time::Duration::from_millis(500 * tries)).await;
                continue;
            }
            assert_eq!(code, 0, "rabbitmqctl {args:?} on {}: {text}", self.node);
            return text;
        }
    }

    /// What the node printed so far (its log goes to standard output).
    pub async fn logs(&self) -> String {
        let stdout = self.container.stdout_to_vec().await.unwrap_or_default();
        String::from_utf8_lossy(&stdout).into_owned()
    }

    /// Removes the container now (it is also removed when dropped).
    pub async fn remove(self) {
        let _ = self.container.rm().await;
    }
}

/// Three RabbitMQ nodes in one cluster, and the epmd they share.
pub struct Cluster {
    /// The nodes; `nodes[0]` is the one the others joined.
    pub nodes: Vec<Broker>,
    _epmd: ContainerAsync<GenericImage>,
}

impl Cluster {
    /// Starts three nodes and joins the second and third to the first; every node
    /// runs and answers AMQP when it returns.
    pub async fn start(test: &str) -> Cluster {
        engine::ensure();
        let (name, tag) = image();
        let epmd_port = free_port();
        let epmd = GenericImage::new(name.clone(), tag.clone())
            .with_wait_for(WaitFor::millis(300))
            .with_network("host")
            .with_label(LABEL, test)
            .with_container_name(format!("dtrust-test-{}-epmd-{epmd_port}", sanitize(test)))
            .with_cmd([
                "epmd".to_string(),
                "-port".to_string(),
                epmd_port.to_string(),
                "-address".to_string(),
                "127.0.0.1".to_string(),
            ])
            .with_startup_timeout(STARTUP)
            .start()
            .await
            .expect("start the cluster's epmd container");
        let cookie = format!("DTRUSTTEST{epmd_port}COOKIE");
        let spec = |_: usize| NodeSpec {
            test: test.to_string(),
            epmd_port,
            cookie: Some(cookie.clone()),
        };
        let (a, b, c) = tokio::join!(
            Broker::start_node(spec(0)),
            Broker::start_node(spec(1)),
            Broker::start_node(spec(2))
        );
        let nodes = vec![a, b, c];
        for node in &nodes[1..] {
            node.ctl(&["stop_app"]).await;
            node.ctl(&["join_cluster", &nodes[0].node]).await;
            node.ctl(&["start_app"]).await;
            node.wait_ready().await;
        }
        let cluster = Cluster { nodes, _epmd: epmd };
        let running = cluster.running_nodes(&cluster.nodes[0]).await;
        assert_eq!(running.len(), 3, "three running nodes: {running:?}");
        cluster
    }

    /// The running nodes as `node` sees them (`rabbitmqctl cluster_status`).
    pub async fn running_nodes(&self, node: &Broker) -> Vec<String> {
        let text = node.ctl(&["cluster_status", "--formatter", "json"]).await;
        let json: serde_json::Value = text
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("cluster_status as JSON: {text}"));
        json["running_nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A test name as it may stand in a container name.
fn sanitize(test: &str) -> String {
    test.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}
