//! Test harness: starts the real `video-import-api`, `-worker` and `-notifier` binaries against
//! a fresh PostgreSQL database and RabbitMQ queue prefix per test, plus local HTTP servers that
//! serve videos and receive webhooks.
//!
//! Build the binaries first: `cargo build --workspace --bins && cargo test --workspace`.

mod batch;
pub mod otlp;
mod poll;
pub mod receiver;
pub mod services;
pub mod videos;

pub use batch::{batch, Batch};
pub use poll::poll_until;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;
use tokio::process::{Child, Command};
use video_import_shared::queue::Topology;

/// The machine's PostgreSQL port.
const POSTGRES_PORT: u16 = 5432;
/// The machine's RabbitMQ.
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Administrative connection to the PostgreSQL on `port` (creates and drops the per-test
/// databases).
fn admin_db(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres")
}
/// Where the test's video servers and webhook receivers listen (see `allowed_networks`).
pub const TEST_SERVERS: &str = "127.0.0.1/32";
/// An `allowed_networks` value that admits none of the test servers.
pub const NO_TEST_SERVERS: &str = "10.255.255.255/32";
/// Delay queues a test may create: every bucket of delays up to 100 s (tests configure
/// short retry delays; see `queue::delay_bucket`).
fn test_delays() -> Vec<u64> {
    (1..=100).collect()
}

/// Folder holding the built binaries: `target/<profile>`, whether this executable is a test
/// (in `target/<profile>/deps`) or the benchmark (in `target/<profile>`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable folder");
    if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before `cargo test`",
        path.display()
    );
    path
}

/// Path of a binary built in this workspace (panics, saying what to build, when missing).
pub fn bin_path(name: &str) -> PathBuf {
    bin(name)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn random_suffix() -> String {
    video_import_shared::ids::random_id(10)
}

/// A project with its webhook secret and tokens.
#[derive(Debug, Clone)]
pub struct Project {
    pub handle: String,
    pub secret: String,
    /// Scopes public-api:write and public-api:read.
    pub token: String,
}

/// What a process of the stack is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `video-import-api serve`.
    Api,
    /// `video-import-worker`.
    Worker,
    /// `video-import-notifier`.
    Notifier,
    /// Started with [`Stack::spawn`]: any binary, any arguments.
    Other,
}

/// A process the stack started: its name (its log is `dir/NAME.log`) and where it answers
/// `/healthz`, `/readyz` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Unique within the stack: `api`, `worker0`, `worker1`, …, `notifier0`, …
    pub name: String,
    /// What it runs.
    pub kind: Kind,
    /// The port of its metrics endpoint (the API's: its listen port; 0 when not known, for
    /// processes started with [`Stack::spawn`]).
    pub metrics_port: u16,
}

impl Proc {
    /// `host:port` of its metrics endpoint.
    pub fn metrics_address(&self) -> String {
        format!("127.0.0.1:{}", self.metrics_port)
    }
}

/// How a process was started, so that it can be started again the same way.
#[derive(Debug, Clone)]
struct Spec {
    binary: String,
    args: Vec<String>,
    extra: Vec<(String, String)>,
}

/// A process of the stack that has not been stopped by the test.
struct Running {
    proc: Proc,
    spec: Spec,
    child: Child,
}

/// One running stack: database, queue prefix, storage folder and processes.
pub struct Stack {
    /// Where each process serves `/metrics`: (Prometheus job, host:port).
    pub scrape_targets: Vec<(String, String)>,
    admin_url: String,
    amqp_url: String,
    pub db_name: String,
    pub db_url: String,
    pub prefix: String,
    pub dir: PathBuf,
    pub api_url: String,
    pub http: reqwest::Client,
    env: Vec<(String, String)>,
    processes: Vec<Running>,
    /// Every process name used so far, in start order (their logs stay after they stop).
    started: Vec<String>,
    /// Processes of each kind started so far, for their names.
    workers_started: usize,
    notifiers_started: usize,
    apis_started: usize,
}

/// How to start a stack.
#[derive(Debug, Clone)]
pub struct Options {
    pub workers: usize,
    pub notifier: bool,
    /// Extra `VIDEO_IMPORT__...` variables for every process.
    pub env: Vec<(String, String)>,
    /// PostgreSQL to use (the machine's unless a test brings its own).
    pub postgres_port: u16,
    /// RabbitMQ to use (the machine's unless a test brings its own).
    pub amqp_url: String,
    /// An existing database on that PostgreSQL to use (and migrate, and drop at the end)
    /// instead of a new one: e.g. one an upgrade test filled at an older schema.
    pub database: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 1,
            notifier: true,
            env: Vec::new(),
            postgres_port: POSTGRES_PORT,
            amqp_url: AMQP_URL.into(),
            database: None,
        }
    }
}

/// Local storage keeps each small video in a file of its own (`storage.small_files = files`)
/// rather than packed: for tests that damage, count or remove the stored files one by one.
pub const A_FILE_EACH: (&str, &str) = ("VIDEO_IMPORT__STORAGE__SMALL_FILES", "files");

impl Options {
    /// The default stack (one worker, a notifier) with extra `VIDEO_IMPORT__...` variables.
    pub fn with_env(env: &[(&str, &str)]) -> Options {
        Options {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Options::default()
        }
    }

    /// Only the API (no worker, no notifier), with extra `VIDEO_IMPORT__...` variables.
    pub fn api_only(env: &[(&str, &str)]) -> Options {
        Options {
            workers: 0,
            notifier: false,
            ..Options::with_env(env)
        }
    }
}

impl Stack {
    /// A database, migrations, the API, `workers` workers and a notifier.
    pub async fn start(options: Options) -> Stack {
        video_import_shared::telemetry::init_tls();
        let suffix = random_suffix();
        let admin_url = admin_db(options.postgres_port);
        let db_name = match options.database {
            Some(existing) => existing,
            None => {
                let db_name = format!("vit_{suffix}");
                let (admin, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
                    .await
                    .expect("PostgreSQL on 127.0.0.1:5432 (start it with deploy/services.sh)");
                tokio::spawn(conn);
                admin
                    .batch_execute(&format!("CREATE DATABASE {db_name}"))
                    .await
                    .expect("create test database");
                db_name
            }
        };
        let db_url = format!(
            "postgres://postgres@127.0.0.1:{}/{db_name}",
            options.postgres_port
        );
        let prefix = format!("vit-{suffix}");
        let dir = std::env::temp_dir().join(format!("vit-{suffix}"));
        let api_port = free_port();
        let mut env: Vec<(String, String)> = vec![
            ("VIDEO_IMPORT__DATABASE__URL".into(), db_url.clone()),
            ("VIDEO_IMPORT__DATABASE__POOL_SIZE".into(), "4".into()),
            ("VIDEO_IMPORT__AMQP__URL".into(), options.amqp_url.clone()),
            ("VIDEO_IMPORT__AMQP__PREFIX".into(), prefix.clone()),
            (
                "VIDEO_IMPORT__API__LISTEN".into(),
                format!("127.0.0.1:{api_port}"),
            ),
            (
                "VIDEO_IMPORT__STORAGE__ROOT".into(),
                dir.join("videos").display().to_string(),
            ),
            // Private networks stay refused, as in production; the test servers' address
            // is admitted as a trusted host.
            (
                "VIDEO_IMPORT__FETCH__ALLOWED_NETWORKS".into(),
                TEST_SERVERS.into(),
            ),
            (
                "VIDEO_IMPORT__WEBHOOK__ALLOWED_NETWORKS".into(),
                TEST_SERVERS.into(),
            ),
            (
                "VIDEO_IMPORT__FETCH__RETRY_DELAYS_SECS".into(),
                "1,1".into(),
            ),
            ("VIDEO_IMPORT__FETCH__QUICK_RETRIES".into(), "1".into()),
            (
                "VIDEO_IMPORT__WEBHOOK__RETRY_SCHEDULE_SECS".into(),
                "1,1,1".into(),
            ),
            ("VIDEO_IMPORT__WEBHOOK__TIMEOUT_SECS".into(), "5".into()),
            (
                "VIDEO_IMPORT__LOG__FILTER".into(),
                std::env::var("VIT_LOG_FILTER").unwrap_or_else(|_| "info".into()),
            ),
        ];
        for (k, v) in options.env {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        }
        // From here on the stack exists, so a panic below still removes the database.
        let mut stack = Stack {
            // Each process adds its own once it is ready.
            scrape_targets: Vec::new(),
            admin_url,
            amqp_url: options.amqp_url.clone(),
            db_name,
            db_url,
            prefix,
            dir,
            api_url: format!("http://127.0.0.1:{api_port}"),
            http: reqwest::Client::new(),
            env,
            processes: Vec::new(),
            started: Vec::new(),
            workers_started: 0,
            notifiers_started: 0,
            apis_started: 0,
        };
        std::fs::create_dir_all(&stack.dir).expect("test folder");
        eprintln!(
            "test stack: database {}, logs in {}",
            stack.db_name,
            stack.dir.display()
        );
        let out = stack.api_cli(&["migrate"]).await;
        assert!(out.status.success(), "migrate failed: {}", out.stderr);
        let api = Spec {
            binary: "video-import-api".into(),
            args: vec!["serve".into()],
            extra: Vec::new(),
        };
        let name = stack.next_name(Kind::Api);
        stack.start_process(&name, Kind::Api, api_port, api).await;
        for _ in 0..options.workers {
            stack.spawn_worker().await;
        }
        if options.notifier {
            stack.spawn_notifier().await;
        }
        stack
    }

    /// Starts one more worker (`worker0`, `worker1`, … in start order) and waits until it
    /// is ready.
    pub async fn spawn_worker(&mut self) -> Proc {
        self.spawn_ready(Kind::Worker, "video-import-worker").await
    }

    /// Starts one more worker with extra `VIDEO_IMPORT__...` variables and waits until it
    /// is ready.
    pub async fn spawn_worker_with(&mut self, extra: &[(&str, &str)]) -> Proc {
        let port = free_port();
        let mut spec = spec("video-import-worker", &[], extra);
        spec.extra.push((
            "VIDEO_IMPORT__METRICS__LISTEN".into(),
            format!("127.0.0.1:{port}"),
        ));
        let name = self.next_name(Kind::Worker);
        self.start_process(&name, Kind::Worker, port, spec).await
    }

    /// Starts one more notifier (`notifier0`, `notifier1`, …) and waits until it is ready.
    pub async fn spawn_notifier(&mut self) -> Proc {
        self.spawn_ready(Kind::Notifier, "video-import-notifier")
            .await
    }

    /// Starts `binary` with its metrics on a free port, waits for `/readyz` and adds it to
    /// the scrape targets.
    async fn spawn_ready(&mut self, kind: Kind, binary: &str) -> Proc {
        let port = free_port();
        let spec = Spec {
            binary: binary.into(),
            args: Vec::new(),
            extra: vec![(
                "VIDEO_IMPORT__METRICS__LISTEN".into(),
                format!("127.0.0.1:{port}"),
            )],
        };
        let name = self.next_name(kind);
        self.start_process(&name, kind, port, spec).await
    }

    /// The name the next process of `kind` gets.
    fn next_name(&mut self, kind: Kind) -> String {
        match kind {
            Kind::Worker => {
                self.workers_started += 1;
                format!("worker{}", self.workers_started - 1)
            }
            Kind::Notifier => {
                self.notifiers_started += 1;
                format!("notifier{}", self.notifiers_started - 1)
            }
            // The first is `api`, as the tests that read its log expect.
            Kind::Api => {
                self.apis_started += 1;
                match self.apis_started {
                    1 => "api".into(),
                    n => format!("api{}", n - 1),
                }
            }
            Kind::Other => format!("process{}", self.started.len()),
        }
    }

    /// Starts a process from `spec`, waits until it is ready (API, worker, notifier) and
    /// adds it to the scrape targets.
    async fn start_process(&mut self, name: &str, kind: Kind, port: u16, spec: Spec) -> Proc {
        let proc = Proc {
            name: name.into(),
            kind,
            metrics_port: port,
        };
        self.launch(proc.clone(), spec.clone());
        if kind != Kind::Other {
            let address = proc.metrics_address();
            self.wait_ready(&format!("http://{address}/readyz")).await;
            self.scrape_targets.push((spec.binary, address));
        }
        proc
    }

    /// The running processes of `kind`, in start order.
    pub fn running(&self, kind: Kind) -> Vec<Proc> {
        self.processes
            .iter()
            .filter(|r| r.proc.kind == kind)
            .map(|r| r.proc.clone())
            .collect()
    }

    /// Process id of a running process of the stack (for resource measurements).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.processes
            .iter()
            .find(|r| r.proc.name == name)
            .and_then(|r| r.child.id())
    }

    /// The text a binary's `/metrics` at `address` (host:port) answers.
    pub async fn metrics(&self, address: &str) -> String {
        self.http
            .get(format!("http://{address}/metrics"))
            .send()
            .await
            .expect("metrics endpoint answers")
            .text()
            .await
            .expect("metrics text")
    }

    /// The sum over the stack's running workers of metric `name` (with its labels, as
    /// exposed); panics when a worker does not expose it.
    pub async fn over_workers(&self, name: &str) -> f64 {
        let mut sum = 0.0;
        for worker in self.running(Kind::Worker) {
            let text = self.metrics(&worker.metrics_address()).await;
            sum += text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name} in {}'s metrics", worker.name));
        }
        sum
    }

    /// Starts one more API with extra variables; returns its base URL once it answers.
    pub async fn spawn_api(&mut self, name: &str, extra: &[(&str, &str)]) -> String {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut vars = vec![("VIDEO_IMPORT__API__LISTEN", listen.as_str())];
        vars.extend_from_slice(extra);
        let proc = Proc {
            name: name.into(),
            kind: Kind::Api,
            metrics_port: port,
        };
        self.launch(proc, spec("video-import-api", &["serve"], &vars));
        let base = format!("http://{listen}");
        let healthz = format!("{base}/healthz");
        let what = format!("{name} to answer {healthz}");
        self.poll_until(&what, Duration::from_secs(30), async || {
            self.http.get(&healthz).send().await.map(|_| ())
        })
        .await;
        base
    }

    /// Starts a process of the stack with extra variables; its output goes to `dir/name.log`.
    pub async fn spawn(&mut self, name: &str, binary: &str, args: &[&str], extra: &[(&str, &str)]) {
        let proc = Proc {
            name: name.into(),
            kind: Kind::Other,
            metrics_port: 0,
        };
        self.launch(proc, spec(binary, args, extra));
    }

    /// Starts the process; its output goes to `dir/NAME.log`.
    fn launch(&mut self, proc: Proc, spec: Spec) {
        assert!(
            !self.started.contains(&proc.name),
            "a process called {} was started before: its log would be overwritten",
            proc.name
        );
        let log =
            std::fs::File::create(self.dir.join(format!("{}.log", proc.name))).expect("log file");
        let mut command = Command::new(bin(&spec.binary));
        command
            .args(&spec.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(spec.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true);
        let child = command.spawn().expect("spawn binary");
        self.started.push(proc.name.clone());
        self.processes.push(Running { proc, spec, child });
    }

    /// Takes process `name` out of the stack (and its scrape target).
    fn remove(&mut self, name: &str) -> Option<Running> {
        let pos = self.processes.iter().position(|r| r.proc.name == name)?;
        let running = self.processes.remove(pos);
        let address = running.proc.metrics_address();
        self.scrape_targets.retain(|(_, a)| *a != address);
        Some(running)
    }

    /// Sends SIGTERM to process `name` and waits for it to exit.
    pub async fn terminate(&mut self, name: &str) -> std::process::ExitStatus {
        let mut running = self.remove(name).expect("a process of that name");
        let pid = running.child.id().expect("running");
        // Through the system call, not the `kill` program (procps is not on every machine).
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap_or_else(|e| panic!("cannot send SIGTERM to {name}: {e}"));
        tokio::time::timeout(Duration::from_secs(60), running.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{name} did not exit within 60 s of SIGTERM"))
            .expect("exit status")
    }

    /// Stops `proc` with SIGTERM (it must exit cleanly) and starts a process of the same
    /// kind with the same configuration (the same ports: a restarted API answers at the
    /// same URL); returns the new process once it is ready.
    pub async fn restart(&mut self, proc: &Proc) -> Proc {
        self.restart_after(proc, Duration::ZERO).await
    }

    /// [`Stack::restart`], with the process kind down for `pause` in between (as while a
    /// deployment replaces a machine).
    pub async fn restart_after(&mut self, proc: &Proc, pause: Duration) -> Proc {
        let spec = self
            .processes
            .iter()
            .find(|r| r.proc.name == proc.name)
            .map(|r| r.spec.clone())
            .unwrap_or_else(|| panic!("{} is not running", proc.name));
        let status = self.terminate(&proc.name).await;
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM\n{}",
            proc.name,
            self.log_tails(FAILURE_LOG_LINES)
        );
        tokio::time::sleep(pause).await;
        let name = self.next_name(proc.kind);
        self.start_process(&name, proc.kind, proc.metrics_port, spec)
            .await
    }

    /// Stops a process by name with SIGKILL.
    pub async fn kill(&mut self, name: &str) {
        if let Some(mut running) = self.remove(name) {
            let _ = running.child.kill().await;
        }
    }

    /// Waits until `url` answers 2xx; fails at once if a process of the stack exited.
    async fn wait_ready(&mut self, url: &str) {
        // Borrowed field by field: the probe checks the children, the message reads the logs.
        let (http, processes, dir, started) =
            (&self.http, &mut self.processes, &self.dir, &self.started);
        let what = format!("{url} to answer 2xx");
        let tails = || log_tails(dir, started, FAILURE_LOG_LINES);
        poll::poll_with(
            &what,
            Duration::from_secs(30),
            async || {
                for running in processes.iter_mut() {
                    if let Ok(Some(status)) = running.child.try_wait() {
                        panic!("{} exited with {status}:\n{}", running.proc.name, tails());
                    }
                }
                match http.get(url).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(r.status().to_string()),
                    Err(e) => Err(e.to_string()),
                }
            },
            tails,
        )
        .await
    }

    /// The log of process `name`.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The last `lines` lines of the log of every process the stack started (running or
    /// not), for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        log_tails(&self.dir, &self.started, lines)
    }

    /// Runs `video-import-api ARGS` with the stack's configuration.
    pub async fn api_cli(&self, args: &[&str]) -> CliOutput {
        self.api_cli_with(args, &[]).await
    }

    /// Runs `video-import-api ARGS` with extra environment variables.
    pub async fn api_cli_with(&self, args: &[&str], extra: &[(&str, &str)]) -> CliOutput {
        self.run_binary("video-import-api", args, extra).await
    }

    /// A command running `binary` (built in this workspace), without the stack's variables.
    pub fn command(&self, binary: &str) -> Command {
        let mut command = Command::new(bin(binary));
        command.stdin(Stdio::null()).kill_on_drop(true);
        command
    }

    /// Runs `binary ARGS` to its end with the stack's configuration and extra variables.
    pub async fn run_binary(
        &self,
        binary: &str,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> CliOutput {
        self.run_binary_with_input(binary, args, extra, None).await
    }

    /// Runs `video-import-api ARGS` to its end with `input` on its standard input.
    pub async fn api_cli_with_input(&self, args: &[&str], input: &str) -> CliOutput {
        self.run_binary_with_input("video-import-api", args, &[], Some(input))
            .await
    }

    /// [`Stack::run_binary`], with `input` (if any) on standard input.
    async fn run_binary_with_input(
        &self,
        binary: &str,
        args: &[&str],
        extra: &[(&str, &str)],
        input: Option<&str>,
    ) -> CliOutput {
        use tokio::io::AsyncWriteExt;
        let mut child = Command::new(bin(binary))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run a binary");
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(input.as_bytes())
                .await
                .expect("write to its standard input");
        }
        let out = child.wait_with_output().await.expect("run a binary");
        CliOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Creates a project and a read+write token with the CLI.
    pub async fn project(&self, handle: &str) -> Project {
        let out = self.api_cli(&["project", "create", handle]).await;
        assert!(out.status.success(), "project create: {}", out.stderr);
        let created: Value = serde_json::from_str(&out.stdout).expect("project JSON");
        let token = self
            .token(handle, &["public-api:write", "public-api:read"])
            .await;
        Project {
            handle: handle.into(),
            secret: created["webhookSecret"].as_str().unwrap().into(),
            token,
        }
    }

    /// Creates a token with `scopes` for project `handle`.
    pub async fn token(&self, handle: &str, scopes: &[&str]) -> String {
        let mut args = vec!["token", "create", "--project", handle];
        for s in scopes {
            args.push("--scope");
            args.push(s);
        }
        let out = self.api_cli(&args).await;
        assert!(out.status.success(), "token create: {}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).expect("token JSON");
        v["token"].as_str().unwrap().to_string()
    }

    /// POSTs a raw body to the import endpoint.
    pub async fn import_raw(&self, token: Option<&str>, body: &str) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/api/v1/import/videos", self.api_url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("POST import");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// POSTs a batch (a [`Batch`] or any JSON) and returns the job id, asserting 200.
    pub async fn import(&self, token: &str, body: &impl serde::Serialize) -> String {
        let body = serde_json::to_string(body).expect("a JSON body");
        let (status, response) = self.import_raw(Some(token), &body).await;
        assert_eq!(status, 200, "import answered {response}");
        response["id"].as_str().expect("job id").to_string()
    }

    /// GETs `path` with `token`; returns status and JSON.
    pub async fn get(&self, token: Option<&str>, path: &str) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{path}", self.api_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The job's status, asserting 200.
    pub async fn status(&self, token: &str, job: &str) -> Value {
        let (code, body) = self
            .get(
                Some(token),
                &format!("/api/v1/import/videos/status?id={job}"),
            )
            .await;
        assert_eq!(code, 200, "status answered {body}");
        body
    }

    /// Polls the status until the job is finished (at most `secs` seconds); answers other
    /// than 200 (the API's database restarting) are waited out.
    pub async fn wait_finished(&self, token: &str, job: &str, secs: u64) -> Value {
        let path = format!("/api/v1/import/videos/status?id={job}");
        let what = format!("job {job} to finish");
        self.poll_until(&what, Duration::from_secs(secs), async || {
            let (code, status) = self.get(Some(token), &path).await;
            if code == 200 && status["finished"] == Value::Bool(true) {
                Ok(status)
            } else {
                Err(format!("{code} {status}"))
            }
        })
        .await
    }

    /// Polls the status until the job's webhook is in `state` (at most 15 s).
    pub async fn wait_webhook(&self, token: &str, job: &str, state: &str) -> Value {
        let what = format!("the webhook of {job} to be {state}");
        self.poll_until(&what, Duration::from_secs(15), async || {
            let status = self.status(token, job).await;
            if status["webhook"]["state"] == state {
                Ok(status)
            } else {
                Err(status)
            }
        })
        .await
    }

    /// [`poll_until`], with the tails of the stack's process logs in the failure message.
    pub async fn poll_until<T, E: std::fmt::Display>(
        &self,
        what: &str,
        timeout: Duration,
        probe: impl AsyncFnMut() -> Result<T, E>,
    ) -> T {
        poll::poll_with(what, timeout, probe, || self.log_tails(FAILURE_LOG_LINES)).await
    }

    /// The processes of the stack that are no longer running.
    pub fn exited(&mut self) -> Vec<String> {
        let mut exited = Vec::new();
        for running in &mut self.processes {
            if !matches!(running.child.try_wait(), Ok(None)) {
                exited.push(running.proc.name.clone());
            }
        }
        exited
    }

    /// The first node of the stack's `amqp.url`.
    fn first_node(&self) -> &str {
        self.amqp_url.split(',').next().unwrap_or_default()
    }

    /// A connection of its own to the stack's first RabbitMQ node, and a channel on it (the
    /// caller closes the connection).
    async fn broker_channel(&self) -> (lapin::Connection, lapin::Channel) {
        let connection = lapin::Connection::connect(self.first_node(), Default::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672");
        let channel = connection.create_channel().await.expect("a channel");
        (connection, channel)
    }

    /// Messages waiting in the queue of `routing_key`, not yet taken by any worker.
    pub async fn ready(&self, routing_key: &str) -> u32 {
        let (connection, channel) = self.broker_channel().await;
        let queue = channel
            .queue_declare(
                Topology::new(&self.prefix).queue(routing_key).into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("the queue exists");
        let _ = connection.close(200, "bye".into()).await;
        queue.message_count()
    }

    /// Publishes `payload` to the dead-letter exchange under `routing_key`, as the broker
    /// does with a message that exceeded its delivery limit.
    pub async fn dead_letter(&self, routing_key: &str, payload: &Value) {
        self.publish_to(&Topology::new(&self.prefix).dead(), routing_key, payload)
            .await;
    }

    /// Publishes `payload` to the work exchange under `routing_key`, as a binary of another
    /// release would.
    pub async fn publish(&self, routing_key: &str, payload: &Value) {
        self.publish_to(
            &Topology::new(&self.prefix).exchange(),
            routing_key,
            payload,
        )
        .await;
    }

    async fn publish_to(&self, exchange: &str, routing_key: &str, payload: &Value) {
        let (connection, channel) = self.broker_channel().await;
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                Default::default(),
                payload.to_string().as_bytes(),
                Default::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        let _ = connection.close(200, "bye".into()).await;
    }

    /// Asks for a job's webhook again (`POST …/{job}/webhook`); returns the HTTP status.
    pub async fn redeliver(&self, token: &str, job: &str) -> u16 {
        self.http
            .post(format!(
                "{}/api/v1/import/videos/{job}/webhook",
                self.api_url
            ))
            .bearer_auth(token)
            .send()
            .await
            .expect("POST redelivery")
            .status()
            .as_u16()
    }

    /// A small pool on the stack's database, for calling the store's functions directly.
    pub async fn pool(&self) -> video_import_shared::db::Pool {
        video_import_shared::db::connect(&video_import_shared::config::DatabaseSettings {
            url: self.db_url.clone(),
            pool_size: 2,
            pool_timeout: Duration::from_secs(10),
        })
        .await
        .expect("a pool on the stack's database")
    }

    /// A SQL query against the stack's database.
    pub async fn sql(&self, query: &str) -> Vec<tokio_postgres::Row> {
        let (client, conn) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls)
            .await
            .expect("connect test database");
        tokio::spawn(conn);
        client.query(query, &[]).await.expect("query")
    }

    /// Stops the processes and removes the database, queues and files (what dropping the
    /// stack does; kept so that a test's end reads as such).
    pub async fn finish(self) {
        drop(self);
    }
}

/// Stack folders whose removal waits for [`remove_deferred_folders`], when deferred.
static DEFERRED: std::sync::Mutex<Option<Vec<PathBuf>>> = std::sync::Mutex::new(None);

/// From now on, a finished stack's folder (its stored videos) stays until
/// [`remove_deferred_folders`]. For benchmarks: ext4 avoids reusing an inode freed in the
/// last minute and reads inode tables to find one that was not, so files created right
/// after another run removed thousands cost several times more to create.
pub fn defer_folder_removal() {
    DEFERRED
        .lock()
        .expect("not poisoned")
        .get_or_insert_with(Vec::new);
}

/// Removes `folder` now, or at [`remove_deferred_folders`] when removal is deferred.
pub fn remove_folder(folder: PathBuf) {
    match DEFERRED.lock().expect("not poisoned").as_mut() {
        Some(deferred) => deferred.push(folder),
        None => {
            let _ = std::fs::remove_dir_all(folder);
        }
    }
}

/// Removes the folders whose removal was deferred.
pub fn remove_deferred_folders() {
    let folders = DEFERRED
        .lock()
        .expect("not poisoned")
        .take()
        .unwrap_or_default();
    for folder in folders {
        let _ = std::fs::remove_dir_all(folder);
    }
}

/// How many lines of each process's log a failed test prints.
const FAILURE_LOG_LINES: usize = 50;

impl Drop for Stack {
    /// Kills the processes and removes the database, queues and folder, also when the test
    /// panicked (then the process logs' tails are printed first, as the folder goes too).
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(secs) = std::env::var("VIT_HOLD_ON_FAILURE")
                .ok()
                .and_then(|s| s.parse().ok())
            {
                // For investigating a flaky failure: the stack stays up to be looked at.
                eprintln!(
                    "holding the failed stack for {secs} s: folder {}, database {}, prefix {}, {:?}",
                    self.dir.display(),
                    self.db_name,
                    self.prefix,
                    self.processes.iter().map(|r| (&r.proc.name, r.child.id())).collect::<Vec<_>>()
                );
                std::thread::sleep(Duration::from_secs(secs));
            }
        }
        let mut pids = Vec::new();
        for running in &mut self.processes {
            pids.extend(running.child.id());
            let _ = running.child.start_kill();
        }
        wait_dead(&pids, Duration::from_secs(10));
        if std::thread::panicking() {
            eprintln!(
                "test failed; the stack's logs were in {} (removed now), the last {} lines of each:\n{}",
                self.dir.display(),
                FAILURE_LOG_LINES,
                self.log_tails(FAILURE_LOG_LINES)
            );
        }
        let cleanup = Cleanup {
            admin_url: self.admin_url.clone(),
            amqp_url: self.first_node().to_string(),
            prefix: self.prefix.clone(),
            db_name: self.db_name.clone(),
        };
        // Drop cannot await, and blocking on the test's own runtime would deadlock a
        // current-thread one: the clean-up gets a thread and a runtime of its own.
        let done = std::thread::spawn(move || cleanup.run()).join();
        if let Err(e) = done {
            eprintln!("clean-up of {} failed: {e:?}", self.db_name);
        }
        if std::thread::panicking() {
            if let Some(keep) = std::env::var_os("VIT_KEEP_LOGS") {
                // For investigating a flaky failure: the whole logs, not only their tails.
                let kept = PathBuf::from(keep).join(self.dir.file_name().unwrap_or_default());
                let _ = std::fs::create_dir_all(&kept);
                for name in &self.started {
                    let file = format!("{name}.log");
                    let _ = std::fs::copy(self.dir.join(&file), kept.join(&file));
                }
                eprintln!("the whole logs are kept in {}", kept.display());
            }
        }
        remove_folder(self.dir.clone());
        // Dropping the children lets tokio reap them.
        self.processes.clear();
    }
}

/// Waits (at most `limit`) until every process in `pids` has exited, so that none still
/// writes into the folder about to be removed.
fn wait_dead(pids: &[u32], limit: Duration) {
    let deadline = Instant::now() + limit;
    while pids.iter().any(|pid| alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` still runs (a zombie waiting to be reaped does not).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the name may hold spaces and parentheses, the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Drops database `name` (connections and all) on the PostgreSQL of `admin_url`, if it is
/// there.
async fn drop_database(admin_url: &str, name: &str) {
    let Ok((admin, conn)) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await else {
        return;
    };
    tokio::spawn(conn);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}

/// A database of a test's own on the machine's PostgreSQL (empty, not migrated), dropped when
/// the value is, also when the test panics.
pub struct Database {
    /// `vit_<random>`.
    pub name: String,
    /// Its `postgres://` URL.
    pub url: String,
    admin_url: String,
}

impl Database {
    /// Creates an empty database `vit_<random>`.
    pub async fn create() -> Database {
        let name = format!("vit_{}", random_suffix());
        let admin_url = admin_db(POSTGRES_PORT);
        let (admin, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (start it with deploy/services.sh)");
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a database");
        Database {
            url: format!("postgres://postgres@127.0.0.1:{POSTGRES_PORT}/{name}"),
            name,
            admin_url,
        }
    }

    /// Settings for `video_import_shared::db::connect`: a small pool on this database.
    pub fn settings(&self) -> video_import_shared::config::DatabaseSettings {
        video_import_shared::config::DatabaseSettings {
            url: self.url.clone(),
            pool_size: 4,
            pool_timeout: Duration::from_secs(10),
        }
    }

    /// A plain connection to the database.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to the database");
        tokio::spawn(conn);
        client
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // As for a stack: a thread and a runtime of its own, since Drop cannot await.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a clean-up runtime");
            runtime.block_on(async {
                let limit = Duration::from_secs(20);
                if tokio::time::timeout(limit, drop_database(&admin_url, &name))
                    .await
                    .is_err()
                {
                    eprintln!("clean-up: PostgreSQL did not answer; database {name} is left");
                }
            });
        })
        .join();
    }
}

/// What a stack leaves outside its folder: its database, queues and exchanges.
struct Cleanup {
    admin_url: String,
    amqp_url: String,
    prefix: String,
    db_name: String,
}

impl Cleanup {
    /// Removes the queues, exchanges and database, each bounded in time so that a broker or
    /// database that went away does not hang the test.
    fn run(self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a clean-up runtime");
        runtime.block_on(async {
            let limit = Duration::from_secs(20);
            if tokio::time::timeout(limit, self.broker()).await.is_err() {
                eprintln!(
                    "clean-up: RabbitMQ did not answer; queues {}.* are left",
                    self.prefix
                );
            }
            if tokio::time::timeout(limit, self.database()).await.is_err() {
                eprintln!(
                    "clean-up: PostgreSQL did not answer; database {} is left",
                    self.db_name
                );
            }
        });
    }

    async fn broker(&self) {
        let Ok(conn) = lapin::Connection::connect(&self.amqp_url, Default::default()).await else {
            return;
        };
        let topology = Topology::new(&self.prefix);
        let delays = test_delays();
        let mut channel = conn.create_channel().await.ok();
        for queue in topology.queue_names(&delays) {
            let Some(open) = &channel else { break };
            if open
                .queue_delete(queue.as_str().into(), Default::default())
                .await
                .is_err()
            {
                // A failed operation closes the channel: go on with a new one.
                channel = conn.create_channel().await.ok();
            }
        }
        for exchange in topology.exchange_names(&delays) {
            let Some(open) = &channel else { break };
            if open
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await
                .is_err()
            {
                channel = conn.create_channel().await.ok();
            }
        }
        let _ = conn.close(200, "bye".into()).await;
    }

    async fn database(&self) {
        drop_database(&self.admin_url, &self.db_name).await;
    }
}

/// The last `lines` lines of the logs `dir/NAME.log` of `names`.
fn log_tails(dir: &Path, names: &[String], lines: usize) -> String {
    let mut out = String::new();
    for name in names {
        let path = dir.join(format!("{name}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        out.push_str(&format!(
            "--- {name} (last {} of {} lines of {}) ---\n{}\n",
            tail.len(),
            all.len(),
            path.display(),
            tail.join("\n")
        ));
    }
    out
}

/// A [`Spec`] from borrowed parts.
fn spec(binary: &str, args: &[&str], extra: &[(&str, &str)]) -> Spec {
    Spec {
        binary: binary.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        extra: extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// Output of a CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Every file below `dir`, as paths relative to it, sorted (e.g. a stack's stored videos).
pub fn files_below(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    found
}

/// Where the stored asset `key` lies below the storage folder `root`: its file, and the
/// bytes of that file that are the asset (all of it, or its range of a pack).
pub fn stored_at(root: &Path, key: &str) -> (PathBuf, std::ops::Range<u64>) {
    use video_import_shared::storage::Location;
    let location = Location::of(key);
    let file = root.join(location.object());
    let range = match location {
        Location::Object(_) => 0..std::fs::metadata(&file).map_or(0, |m| m.len()),
        Location::Packed { offset, len, .. } => offset..offset + len,
    };
    (file, range)
}

/// The bytes of the stored asset `key` below the storage folder `root`, read from disk.
pub fn stored_bytes(root: &Path, key: &str) -> std::io::Result<Vec<u8>> {
    let (file, range) = stored_at(root, key);
    let whole = std::fs::read(file)?;
    whole
        .get(range.start as usize..range.end as usize)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| std::io::Error::other(format!("{key} lies past its file's end")))
}

/// A random lowercase id for test data.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", rand::rng().random_range(0..u32::MAX))
}
