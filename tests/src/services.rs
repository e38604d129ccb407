//! PostgreSQL clusters and RabbitMQ nodes of a test's own, on free ports, for tests that
//! stop or restart a service: they never touch the machine's. Each is removed when its value
//! is dropped.

use std::path::PathBuf;
use std::process::Command;

use crate::free_port;

fn run(program: &str, args: &[&str], envs: &[(&str, String)]) {
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .status()
        .unwrap_or_else(|e| panic!("{program} could not be started: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

/// A PostgreSQL cluster of the test's own (Debian's `pg_createcluster`), trusting local
/// connections like the machine's.
pub struct OwnPostgres {
    version: String,
    name: String,
    pub port: u16,
}

impl OwnPostgres {
    /// Creates and starts the cluster.
    pub fn start() -> Self {
        let versions = std::fs::read_dir("/etc/postgresql").expect("PostgreSQL is installed");
        let version = versions
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .max()
            .expect("a PostgreSQL version")
            .to_string();
        let name = format!("vit{}", crate::unique("").trim_start_matches('-'));
        let port = free_port();
        run(
            "pg_createcluster",
            &[
                "--quiet",
                &version,
                &name,
                "--port",
                &port.to_string(),
                "--start",
                "--",
                "--auth=trust",
            ],
            &[],
        );
        Self {
            version,
            name,
            port,
        }
    }

    /// Restarts the cluster (every connection is dropped).
    pub fn restart(&self) {
        self.ctl("restart");
    }

    /// Stops the cluster.
    pub fn stop(&self) {
        self.ctl("stop");
    }

    /// Starts the stopped cluster.
    pub fn start_again(&self) {
        self.ctl("start");
    }

    fn ctl(&self, action: &str) {
        run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                &self.version,
                &self.name,
                action,
            ],
            &[],
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster")
            .args(["--stop", &self.version, &self.name])
            .status();
    }
}

/// A RabbitMQ node of the test's own, with no plugins, listening on 127.0.0.1.
pub struct OwnRabbitMq {
    server: std::process::Child,
    node: String,
    dir: PathBuf,
    pub port: u16,
}

impl OwnRabbitMq {
    /// Starts the node and waits until it accepts connections.
    pub fn start() -> Self {
        let suffix = crate::unique("");
        let node = format!("vit{suffix}@localhost");
        let dir = std::env::temp_dir().join(format!("vit-rabbitmq{suffix}"));
        let port = free_port();
        std::fs::create_dir_all(dir.join("mnesia")).expect("node folder");
        std::fs::create_dir_all(dir.join("log")).expect("node folder");
        std::fs::write(dir.join("plugins"), "[].\n").expect("plugins file");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .expect("config file");
        // The server drops to the rabbitmq user, which must own its folders.
        run(
            "chown",
            &["-R", "rabbitmq:rabbitmq", &dir.display().to_string()],
            &[],
        );
        let path = |name: &str| dir.join(name).display().to_string();
        let envs = [
            ("RABBITMQ_NODENAME", node.clone()),
            ("RABBITMQ_DIST_PORT", free_port().to_string()),
            ("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf")),
            ("RABBITMQ_MNESIA_BASE", path("mnesia")),
            ("RABBITMQ_LOG_BASE", path("log")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", path("plugins")),
            ("RABBITMQ_PID_FILE", path("pid")),
        ];
        let log = std::fs::File::create(dir.join("server.out")).expect("server output");
        let server = Command::new("setsid")
            .arg("rabbitmq-server")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("server output"))
            .stderr(log)
            .spawn()
            .expect("rabbitmq-server");
        run(
            "rabbitmqctl",
            &["-q", "-n", &node, "wait", &path("pid"), "--timeout", "60"],
            &[],
        );
        Self {
            server,
            node,
            dir,
            port,
        }
    }

    /// The AMQP URL of the node.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the broker for `pause` and starts it again (connections are dropped).
    pub fn restart(&self, pause: std::time::Duration) {
        run("rabbitmqctl", &["-q", "-n", &self.node, "stop_app"], &[]);
        std::thread::sleep(pause);
        run("rabbitmqctl", &["-q", "-n", &self.node, "start_app"], &[]);
    }
}

impl Drop for OwnRabbitMq {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node, "stop"])
            .status();
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A three-node RabbitMQ cluster of the test's own, started by `deploy/rabbitmq-cluster.sh`.
pub struct OwnRabbitCluster {
    dir: PathBuf,
    /// `amqp.url` naming all three nodes.
    pub urls: String,
}

fn cluster_script() -> String {
    format!(
        "{}/../deploy/rabbitmq-cluster.sh",
        env!("CARGO_MANIFEST_DIR")
    )
}

impl OwnRabbitCluster {
    /// Starts the cluster on ports from `base_port` (below the ephemeral range).
    pub fn start(base_port: u16) -> Self {
        let dir =
            std::env::temp_dir().join(format!("vitc{}", crate::unique("").trim_start_matches('-')));
        let out = Command::new(cluster_script())
            .args(["start", &dir.display().to_string(), &base_port.to_string()])
            .output()
            .expect("deploy/rabbitmq-cluster.sh");
        assert!(
            out.status.success(),
            "the cluster did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let urls = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Self { dir, urls }
    }

    /// The Erlang name of node `n` (1 to 3).
    pub fn node(&self, n: u8) -> String {
        let out = Command::new(cluster_script())
            .args(["node", &self.dir.display().to_string(), &n.to_string()])
            .output()
            .expect("deploy/rabbitmq-cluster.sh");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The node (1 to 3) leading quorum queue `queue`, asked of node `ask`.
    pub fn leader_of(&self, queue: &str, ask: u8) -> Option<u8> {
        let out = Command::new("rabbitmqctl")
            .args([
                "-q",
                "-n",
                &self.node(ask),
                "list_queues",
                "name",
                "leader",
                "--no-table-headers",
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let leader = text.lines().find_map(|l| {
            l.split_whitespace()
                .collect::<Vec<_>>()
                .get(..2)
                .filter(|c| c[0] == queue)
                .map(|c| c[1].to_string())
        })?;
        (1..=3).find(|n| self.node(*n) == leader)
    }

    /// Starts node `n` again; it rejoins the cluster.
    pub fn start_node(&self, n: u8) {
        run(
            cluster_script().as_str(),
            &[
                "start-node",
                &self.dir.display().to_string(),
                &n.to_string(),
            ],
            &[],
        );
    }

    /// Stops node `n` as a failing node would stop.
    pub fn stop_node(&self, n: u8) {
        run(
            cluster_script().as_str(),
            &["stop-node", &self.dir.display().to_string(), &n.to_string()],
            &[],
        );
    }
}

impl Drop for OwnRabbitCluster {
    fn drop(&mut self) {
        let _ = Command::new(cluster_script())
            .args(["stop", &self.dir.display().to_string()])
            .status();
    }
}

/// An S3 API of the test's own: moto's server (`moto_server`, from PyPI; `deploy/services.sh`
/// installs it under `target/moto-venv` when it is not on the PATH) on a free port, with
/// one bucket. Stopped when dropped.
pub struct OwnS3 {
    server: std::process::Child,
    pub port: u16,
    pub bucket: String,
}

impl OwnS3 {
    /// Starts the server, waits until it answers, and creates `bucket`.
    pub async fn start(bucket: &str) -> Self {
        video_import_shared::telemetry::init_tls();
        let port = free_port();
        let venv = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/moto-venv/bin/moto_server"
        );
        let program = if std::path::Path::new(venv).exists() {
            venv
        } else {
            "moto_server"
        };
        let server = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("moto_server could not be started ({e}): run deploy/services.sh")
            });
        let s3 = Self {
            server,
            port,
            bucket: bucket.to_string(),
        };
        let http = reqwest::Client::new();
        crate::poll_until(
            "moto_server to answer",
            std::time::Duration::from_secs(30),
            async || {
                http.put(s3.url(""))
                    .send()
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        if r.status().is_success() {
                            Ok(())
                        } else {
                            Err(r.status().to_string())
                        }
                    })
            },
        )
        .await;
        s3
    }

    /// The path-style URL of `key` in the bucket (`""`: the bucket itself).
    pub fn url(&self, key: &str) -> String {
        format!("http://127.0.0.1:{}/{}/{key}", self.port, self.bucket)
    }

    /// The environment that makes object_store use this server, with `storage.url`
    /// `s3://BUCKET/prefix`.
    pub fn env(&self, prefix: &str) -> Vec<(String, String)> {
        [
            (
                "VIDEO_IMPORT__STORAGE__URL",
                format!("s3://{}/{prefix}", self.bucket),
            ),
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The keys in the bucket (a ListObjectsV2 of at most 1000).
    pub async fn keys(&self) -> Vec<String> {
        let xml = reqwest::get(format!("{}?list-type=2", self.url("")))
            .await
            .expect("list the bucket")
            .text()
            .await
            .expect("the listing");
        xml.split("<Key>")
            .skip(1)
            .filter_map(|part| part.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
