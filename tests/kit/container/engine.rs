//! The Docker engine as the container tests reach it.
//!
//! testcontainers (through bollard) speaks Docker's engine API at a fixed version,
//! newer than some engines serve: Debian 12's `docker.io` (20.10) answers API 1.41
//! and refuses newer requests ("client version 1.53 is too new"). [`ensure`] asks the
//! engine for its version once per test process; when it is older than bollard's, a
//! small bridge on 127.0.0.1 forwards to the engine's unix socket and rewrites the
//! version in each request path (`/v1.53/…` → `/v1.41/…`, same length, so no body or
//! length changes), and `DOCKER_HOST` is pointed at it for testcontainers. Everything
//! else passes through byte for byte (log streams, exec's hijacked connections).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// The engine's unix socket from `DOCKER_HOST` (default `/var/run/docker.sock`), or
/// `None` when `DOCKER_HOST` names something else (tcp, ssh).
fn unix_socket() -> Option<String> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host.strip_prefix("unix://").map(str::to_string),
        _ => Some("/var/run/docker.sock".to_string()),
    }
}

/// Makes testcontainers reach the engine: once per process, bridges an engine whose
/// API is older than bollard's (see the module's documentation).
///
/// # Panics
/// When no engine answers: the container tests need one (`make test-containers`).
pub fn ensure() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Some(socket) = unix_socket() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        // A thread and runtime of its own: the bridge outlives every test's runtime.
        std::thread::Builder::new()
            .name("docker-api-bridge".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime of the Docker API bridge");
                runtime.block_on(async move {
                    let version = match api_version(&socket).await {
                        Ok(version) => version,
                        Err(error) => {
                            let _ = tx.send(Err(error));
                            return;
                        }
                    };
                    let wanted = testcontainers::bollard::API_DEFAULT_VERSION;
                    let wanted = format!("{}.{}", wanted.major_version, wanted.minor_version);
                    if !older(&version, &wanted) || version.len() != wanted.len() {
                        let _ = tx.send(Ok(None));
                        return;
                    }
                    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                        .await
                        .expect("bind the Docker API bridge on 127.0.0.1");
                    let addr = listener.local_addr().expect("the bridge's address");
                    let _ = tx.send(Ok(Some((addr, version.clone()))));
                    let from = format!("/v{wanted}/").into_bytes();
                    let to = format!("/v{version}/").into_bytes();
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        let socket = socket.clone();
                        let (from, to) = (from.clone(), to.clone());
                        tokio::spawn(async move {
                            if let Ok(engine) = UnixStream::connect(&socket).await {
                                bridge(client, engine, &from, &to).await;
                            }
                        });
                    }
                });
            })
            .expect("start the Docker API bridge");
        match rx.recv() {
            Ok(Ok(Some((addr, version)))) => {
                eprintln!(
                    "the Docker engine serves API {version}: bridging testcontainers to it at {addr}"
                );
                set_docker_host(addr);
            }
            Ok(Ok(None)) => {}
            Ok(Err(error)) => panic!(
                "no Docker engine answers ({error}); the container tests need one: \
                 run them with `make test-containers`"
            ),
            Err(_) => panic!("the Docker API bridge stopped"),
        }
    });
}

fn set_docker_host(addr: SocketAddr) {
    // Once, before any container is made (testcontainers reads it when it makes its
    // client); the kit's own threads only read it through std, which locks.
    std::env::set_var("DOCKER_HOST", format!("tcp://{addr}"));
}

/// Whether version `a` (`1.41`) is older than `b` (`1.53`).
fn older(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> (u32, u32) {
        let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    };
    parse(a) < parse(b)
}

/// `GET /version` over the unix socket: the engine's `ApiVersion`.
async fn api_version(socket: &str) -> Result<String, String> {
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("{socket}: {e}"))?;
    stream
        .write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let json: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("GET /version: {e}: {body}"))?;
    json["ApiVersion"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("GET /version has no ApiVersion: {body}"))
}

/// Copies both ways; client → engine with `from` replaced by `to` (same length).
async fn bridge(client: TcpStream, engine: UnixStream, from: &[u8], to: &[u8]) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut engine_read, mut engine_write) = engine.into_split();
    let upstream = async {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            replace_all(&mut pending, from, to);
            // Hold back only a tail that may be the start of `from`, so that a
            // request split there is still rewritten, and nothing else waits.
            let keep = partial_tail(&pending, from);
            let send = pending.len() - keep;
            if engine_write.write_all(&pending[..send]).await.is_err() {
                break;
            }
            pending.drain(..send);
        }
        let _ = engine_write.write_all(&pending).await;
        let _ = engine_write.shutdown().await;
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut engine_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

fn replace_all(data: &mut [u8], from: &[u8], to: &[u8]) {
    let mut i = 0;
    while i + from.len() <= data.len() {
        if &data[i..i + from.len()] == from {
            data[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
}

/// The length of the longest end of `data` that is a proper beginning of `from`.
fn partial_tail(data: &[u8], from: &[u8]) -> usize {
    (1..from.len())
        .rev()
        .find(|&k| k <= data.len() && data[data.len() - k..] == from[..k])
        .unwrap_or(0)
}

/// Sends SIGKILL to a container (testcontainers stops with SIGTERM first).
pub async fn kill(id: &str) {
    let docker = testcontainers::core::client::docker_client_instance()
        .await
        .expect("Docker client");
    let options = testcontainers::bollard::query_parameters::KillContainerOptionsBuilder::new()
        .signal("SIGKILL")
        .build();
    docker
        .kill_container(id, Some(options))
        .await
        .expect("SIGKILL the container");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_the_version_and_holds_back_only_a_possible_start() {
        let mut data = b"GET /v1.53/containers/json HTTP/1.1\r\n".to_vec();
        replace_all(&mut data, b"/v1.53/", b"/v1.41/");
        assert_eq!(&data[..], b"GET /v1.41/containers/json HTTP/1.1\r\n");
        assert_eq!(partial_tail(b"POST /v1", b"/v1.53/"), 3);
        assert_eq!(partial_tail(b"{}\r\n", b"/v1.53/"), 0);
        assert!(older("1.41", "1.53"));
        assert!(!older("1.53", "1.53"));
    }
}
