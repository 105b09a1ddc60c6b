//! Shared helpers for integration tests: where the shared models and photos are, real
//! `tandem` and Redis processes, and HTTP calls whose answers are read as the API's own wire
//! types (`tandem::api::types`).
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared test models and photos: `TANDEM_SHARED_DIR`, else `../shared` beside the
/// repository root (as `scripts/test.sh` checks).
pub fn shared() -> PathBuf {
    std::env::var_os("TANDEM_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

pub fn models_dir() -> PathBuf {
    shared().join("models")
}

pub fn images_dir() -> PathBuf {
    shared().join("images")
}

/// One row of `golden.csv`: a model's reference top-5 for one photo.
#[derive(Debug, Clone)]
pub struct Golden {
    pub file: String,
    pub model: String,
    pub top1: usize,
    pub top5: Vec<(usize, f32)>,
}

pub fn golden() -> Vec<Golden> {
    let text = std::fs::read_to_string(images_dir().join("golden.csv"))
        .expect("golden.csv in the shared images (TANDEM_SHARED_DIR)");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let indices = f[4].split_whitespace().map(|x| x.parse().expect("index"));
            let probs = f[5].split_whitespace().map(|x| x.parse().expect("prob"));
            Golden {
                file: f[0].to_owned(),
                model: f[1].to_owned(),
                top1: f[3].parse().expect("top1"),
                top5: indices.zip(probs).collect(),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Real `tandem` processes and a real Redis, for the serving tests.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem::api::types::{ErrorBody, JobResponse, PredictResponse};

/// The Redis the tests share (`scripts/test.sh` makes sure one answers).
pub fn redis_url() -> String {
    std::env::var("TANDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// A key prefix no other test uses.
pub fn unique_prefix(test: &str) -> String {
    format!("tandem-test-{test}-{}", uuid::Uuid::new_v4().simple())
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Arguments every test process shares: the shared models, EfficientNet-Lite2 as the accurate tier.
pub fn model_args() -> Vec<String> {
    vec![
        "--model-dir".into(),
        models_dir().display().to_string(),
        "--accurate-model".into(),
        "efficientnet_lite2.onnx".into(),
        "--intra-threads".into(),
        "1".into(),
    ]
}

/// A child `tandem` process, killed when dropped.
pub struct Tandem {
    pub child: Child,
    pub base: String,
}

impl Tandem {
    /// `tandem serve` on a free port with `extra` arguments; returns once `/health/ready` is 200.
    pub fn serve(extra: &[&str]) -> Self {
        let port = free_port();
        let mut args: Vec<String> = vec!["serve".into(), "--addr".into(), format!("127.0.0.1:{port}")];
        args.extend(model_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = spawn_tandem(&args);
        let mut tandem = Self { child, base: format!("http://127.0.0.1:{port}") };
        tandem.wait_ready(Duration::from_secs(60));
        tandem
    }

    /// `tandem serve` as [`Self::serve`], its log (stderr) written to `log`; returns once
    /// `/health/live` answers, so it also suits a serve whose queue is down (not ready).
    pub fn serve_with_log(extra: &[&str], log: &Path) -> Self {
        let port = free_port();
        let mut args: Vec<String> = vec!["serve".into(), "--addr".into(), format!("127.0.0.1:{port}")];
        args.extend(model_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        let file = std::fs::File::create(log).expect("create the log file");
        let mut tandem = Self { child: spawn(&args, Stdio::from(file)), base: format!("http://127.0.0.1:{port}") };
        tandem.wait_for("/health/live", Duration::from_secs(60));
        tandem
    }

    /// `tandem worker` with `extra` arguments (no HTTP).
    pub fn worker(extra: &[&str]) -> Self {
        let mut args: Vec<String> = vec!["worker".into()];
        args.extend(model_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        Self { child: spawn_tandem(&args), base: String::new() }
    }

    /// `tandem worker` as [`Self::worker`], its log (stderr) written to `log`.
    pub fn worker_with_log(extra: &[&str], log: &Path) -> Self {
        let mut args: Vec<String> = vec!["worker".into()];
        args.extend(model_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        let file = std::fs::File::create(log).expect("create the log file");
        Self { child: spawn(&args, Stdio::from(file)), base: String::new() }
    }

    /// `tandem worker` with its HTTP port (`--metrics-addr`) on a free port; returns once its
    /// `/health/ready` is 200.
    pub fn worker_http(extra: &[&str]) -> Self {
        let port = free_port();
        let mut args: Vec<String> = vec!["worker".into(), "--metrics-addr".into(), format!("127.0.0.1:{port}")];
        args.extend(model_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut tandem = Self { child: spawn_tandem(&args), base: format!("http://127.0.0.1:{port}") };
        tandem.wait_ready(Duration::from_secs(60));
        tandem
    }

    /// `tandem serve`, or `tandem worker` with its HTTP port, on a free port, with `args` and
    /// none of [`model_args`] (the caller names the models); returns once `/health/ready` is 200.
    pub fn http_without_model_args(command: &str, args: &[&str]) -> Self {
        let port = free_port();
        let flag = if command == "serve" { "--addr" } else { "--metrics-addr" };
        let mut all: Vec<String> = vec![command.into(), flag.into(), format!("127.0.0.1:{port}")];
        all.extend(args.iter().map(|s| s.to_string()));
        let mut tandem = Self { child: spawn_tandem(&all), base: format!("http://127.0.0.1:{port}") };
        tandem.wait_ready(Duration::from_secs(60));
        tandem
    }

    pub fn wait_ready(&mut self, timeout: Duration) {
        self.wait_for("/health/ready", timeout);
    }

    /// Waits until `path` answers 200.
    pub fn wait_for(&mut self, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let url = format!("{}{path}", self.base);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tandem exited before it was ready: {status}");
            }
            if let Ok(response) = agent().get(&url).call()
                && response.status() == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("tandem at {} was not ready within {timeout:?}", self.base);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then the exit status (killing it if it does not stop in `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Tandem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_tandem(args: &[String]) -> Child {
    let log = if std::env::var_os("TANDEM_TEST_LOGS").is_some() { Stdio::inherit() } else { Stdio::null() };
    spawn(args, log)
}

fn spawn(args: &[String], log: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env("TANDEM_LOG", "info,ort=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn tandem")
}

/// An HTTP client that reports 4xx/5xx as responses, not errors.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

pub fn read_json(response: ureq::http::Response<ureq::Body>) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let text = body.read_to_string().expect("read body");
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, value)
}

pub fn post_bytes(url: &str, content_type: &str, body: &[u8]) -> (u16, serde_json::Value) {
    read_json(agent().post(url).header("content-type", content_type).send(body).expect("POST"))
}

pub fn post_json(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    post_bytes(url, "application/json", body.to_string().as_bytes())
}

pub fn get_json(url: &str) -> (u16, serde_json::Value) {
    read_json(agent().get(url).call().expect("GET"))
}

/// Reads a body as one of the API's wire types, failing the test with the body if it is not
/// exactly that: written back, the type must give the same JSON, so a field the type does not
/// know, a missing one, or a `null` where the field should be absent fails here.
pub fn parse<T: serde::de::DeserializeOwned + serde::Serialize>(body: &serde_json::Value) -> T {
    let typed: T = serde_json::from_value(body.clone())
        .unwrap_or_else(|e| panic!("not a {} ({e}): {body}", std::any::type_name::<T>()));
    let again = serde_json::to_value(&typed).unwrap_or_else(|e| panic!("cannot write back ({e}): {body}"));
    assert_eq!(&again, body, "not exactly a {}", std::any::type_name::<T>());
    typed
}

/// A `POST /predict` 200 body.
pub fn as_predict(body: &serde_json::Value) -> PredictResponse {
    parse(body)
}

/// A `GET /job/{id}` 200 body.
pub fn as_job(body: &serde_json::Value) -> JobResponse {
    parse(body)
}

/// Any error body: `{"error": {"code", "message"}}`.
pub fn as_error(body: &serde_json::Value) -> ErrorBody {
    parse(body)
}

/// A `POST /predict` that must answer 200, read as its wire type.
pub fn predict(url: &str, content_type: &str, body: &[u8]) -> PredictResponse {
    let (status, answer) = post_bytes(url, content_type, body);
    assert_eq!(status, 200, "POST {url}: {answer}");
    as_predict(&answer)
}

/// The id of the job a `POST /predict` answer queued, failing the test if it has none.
pub fn job_id(answer: &PredictResponse) -> String {
    answer.job_id.unwrap_or_else(|| panic!("no job id: {answer:?}")).to_string()
}

/// Polls `GET /job/{id}` until the job is completed or failed.
pub fn wait_for_job(base: &str, id: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = get_json(&format!("{base}/job/{id}"));
        assert_eq!(status, 200, "GET /job/{id}: {body}");
        if as_job(&body).status.is_final() {
            return body;
        }
        assert!(Instant::now() < deadline, "job {id} not finished within {timeout:?}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`wait_for_job`], the answer read as its wire type.
pub fn wait_for_job_done(base: &str, id: &str, timeout: Duration) -> JobResponse {
    as_job(&wait_for_job(base, id, timeout))
}

pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A private `redis-server` child on its own port and directory, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    append_only: bool,
}

impl RedisServer {
    pub fn start(append_only: bool) -> Self {
        Self::start_on(free_port(), append_only)
    }

    /// On a given port (one a test pointed a `tandem` at before any Redis listened there).
    pub fn start_on(port: u16, append_only: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("tandem-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut server = Self { child: None, port, dir, append_only };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts (again) on the same port and directory: with AOF on, it reloads what it had.
    pub fn restart(&mut self) {
        let aof = if self.append_only { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", aof, "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("redis url");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    /// SIGSTOP: the server keeps its connections open but answers nothing (a stalled Redis).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Self::pause`]: it runs what was sent meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let Some(child) = &self.child else { panic!("redis-server on port {} is not running", self.port) };
        let sent = Command::new("kill").arg(signal).arg(child.id().to_string()).status().expect("kill");
        assert!(sent.success(), "kill {signal} redis-server");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
