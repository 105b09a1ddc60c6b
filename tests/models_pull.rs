//! `tandem models pull` against a small HTTP server started by each test: downloads, sha256 and
//! size checks, atomic placement (no final or temporary file after a rejected download), HTTP
//! errors, redirects, and skipping files already present; and `serve --pull-missing`, which
//! pulls only the missing default files that its configuration uses.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tandem::models::pull::{DEFAULT_MODEL_FILES, ModelFile, Outcome, PullError, Puller, ReceivedSize, Stale};

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 server: one connection at a time, `Connection: close`, counts requests per
// path, and stops when dropped (or after two minutes, whichever comes first).

#[derive(Clone)]
enum Route {
    /// 200 with this body, with a `Content-Length` header.
    Body(Vec<u8>),
    /// 200 with this body and no `Content-Length`: the end of the body is the end of the connection.
    CloseDelimited(Vec<u8>),
    /// 200 announcing `announced` bytes but sending only `data`, then closing.
    Truncated { data: Vec<u8>, announced: usize },
    /// 302 to this path on the same server.
    Redirect(String),
}

struct Server {
    port: u16,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(routes: Vec<(&str, Route)>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("non-blocking listener");
        let routes: HashMap<String, Route> = routes.into_iter().map(|(p, r)| (p.to_owned(), r)).collect();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (hits, stop) = (hits.clone(), stop.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => serve(stream, &routes, &hits),
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        Server { port, hits, stop, thread: Some(thread) }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().expect("hits lock").get(path).copied().unwrap_or(0)
    }

    fn total_hits(&self) -> usize {
        self.hits.lock().expect("hits lock").values().sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, routes: &HashMap<String, Route>, hits: &Mutex<HashMap<String, usize>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
    *hits.lock().expect("hits lock").entry(path.clone()).or_insert(0) += 1;

    let head = |status: &str, extra: &str| format!("HTTP/1.1 {status}\r\nConnection: close\r\n{extra}\r\n");
    let (head, body): (String, &[u8]) = match routes.get(&path) {
        Some(Route::Body(data)) => (head("200 OK", &format!("Content-Length: {}\r\n", data.len())), data),
        Some(Route::CloseDelimited(data)) => (head("200 OK", ""), data),
        Some(Route::Truncated { data, announced }) => {
            (head("200 OK", &format!("Content-Length: {announced}\r\n")), data)
        }
        Some(Route::Redirect(to)) => (head("302 Found", &format!("Location: {to}\r\nContent-Length: 0\r\n")), &[]),
        None => (head("404 Not Found", "Content-Length: 9\r\n"), b"not found"),
    };
    // The client may hang up early (it rejects a wrong Content-Length before reading the body).
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).and_then(|()| stream.flush());
    let _ = stream.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A fresh empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!(
            "tandem-models-pull-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Names of the entries of `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read model dir")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic pseudo-random bytes (spans several of the downloader's 256 KiB chunks).
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A table entry for `data`, with the right size and sha256 (leaked: tables hold `&'static str`).
fn entry_for(url_path: &str, file_name: &str, data: &[u8]) -> ModelFile {
    ModelFile {
        url_path: String::leak(url_path.to_owned()),
        file_name: String::leak(file_name.to_owned()),
        size: data.len() as u64,
        sha256: String::leak(sha256_hex(data)),
    }
}

fn synsets() -> Vec<u8> {
    let path = common::models_dir().join("imagenet_synsets.txt");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tandem(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.args(args);
    for var in
        ["TANDEM_MODEL_DIR", "TANDEM_MODELS_BASE_URL", "TANDEM_MODELS_VERIFY", "TANDEM_LOG", "TANDEM_PULL_MISSING"]
    {
        cmd.env_remove(var);
    }
    for var in ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        cmd.env_remove(var);
    }
    cmd.envs(envs.iter().copied());
    cmd.output().expect("run the tandem binary")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------------
// The library function, with tables made by the tests.

#[test]
fn downloads_verifies_and_places_a_file() {
    let data = payload(600_000, 1);
    let server = Server::start(vec![("/files/model.onnx", Route::Body(data.clone()))]);
    let dir = TempDir::new("ok");
    let model_dir = dir.path().join("nested/models");
    let file = entry_for("files/model.onnx", "model.onnx", &data);

    let puller = Puller::new(&server.base_url(), &model_dir).expect("puller");
    let outcome = puller.pull_file(&file).expect("download succeeds");

    assert_eq!(outcome, Outcome::Downloaded { size: data.len() as u64, replaced: None });
    assert_eq!(std::fs::read(model_dir.join("model.onnx")).expect("final file"), data);
    assert_eq!(entries(&model_dir), ["model.onnx"], "no temporary file is left");
    assert_eq!(server.hits("/files/model.onnx"), 1);
}

#[test]
fn base_url_without_trailing_slash_is_joined() {
    let data = payload(1000, 2);
    let server = Server::start(vec![("/mirror/a.bin", Route::Body(data.clone()))]);
    let dir = TempDir::new("slash");
    let base = server.url("/mirror");
    let puller = Puller::new(&base, dir.path()).expect("puller");
    let file = entry_for("a.bin", "a.bin", &data);
    assert_eq!(puller.url_for(&file), server.url("/mirror/a.bin"));
    puller.pull_file(&file).expect("download succeeds");
    assert_eq!(std::fs::read(dir.path().join("a.bin")).expect("final file"), data);
}

#[test]
fn second_run_skips_present_files_without_a_request() {
    let a = payload(300_000, 3);
    let b = payload(42, 4);
    let server = Server::start(vec![("/a.bin", Route::Body(a.clone())), ("/b.txt", Route::Body(b.clone()))]);
    let dir = TempDir::new("skip");
    let table = [entry_for("a.bin", "a.bin", &a), entry_for("b.txt", "b.txt", &b)];
    let puller = Puller::new(&server.base_url(), dir.path()).expect("puller");

    let first = puller.pull_all(&table);
    assert!(first.iter().all(|(_, r)| matches!(r, Ok(Outcome::Downloaded { replaced: None, .. }))), "{first:?}");
    let second = puller.pull_all(&table);
    let outcomes: Vec<_> = second.into_iter().map(|(_, r)| r.expect("skip succeeds")).collect();
    assert_eq!(outcomes, [Outcome::Present { size: a.len() as u64 }, Outcome::Present { size: b.len() as u64 }]);

    assert_eq!(server.hits("/a.bin"), 1, "no second download");
    assert_eq!(server.hits("/b.txt"), 1, "no second download");
    assert_eq!(entries(dir.path()), ["a.bin", "b.txt"]);
}

#[test]
fn verify_rehashes_present_files_and_replaces_a_corrupted_one() {
    let data = payload(100_000, 5);
    let server = Server::start(vec![("/m.onnx", Route::Body(data.clone()))]);
    let dir = TempDir::new("verify");
    let file = entry_for("m.onnx", "m.onnx", &data);
    let dest = dir.path().join("m.onnx");

    // Right size, wrong bytes: a plain run trusts the size ...
    let mut corrupted = data.clone();
    corrupted[50_000] ^= 0xff;
    std::fs::write(&dest, &corrupted).expect("seed corrupted file");
    let plain = Puller::new(&server.base_url(), dir.path()).expect("puller");
    assert_eq!(plain.pull_file(&file).expect("skip"), Outcome::Present { size: data.len() as u64 });
    assert_eq!(server.total_hits(), 0);

    // ... --verify notices and downloads it again.
    let verify = Puller::new(&server.base_url(), dir.path()).expect("puller").with_verify(true);
    let outcome = verify.pull_file(&file).expect("re-download");
    assert_eq!(
        outcome,
        Outcome::Downloaded { size: data.len() as u64, replaced: Some(Stale::WrongSha256(sha256_hex(&corrupted))) }
    );
    assert_eq!(std::fs::read(&dest).expect("final file"), data);
    assert_eq!(server.hits("/m.onnx"), 1);

    // A correct present file passes --verify without a request.
    assert_eq!(verify.pull_file(&file).expect("verified"), Outcome::Verified { size: data.len() as u64 });
    assert_eq!(server.hits("/m.onnx"), 1);
    assert_eq!(entries(dir.path()), ["m.onnx"]);
}

#[test]
fn present_file_with_the_wrong_size_is_replaced() {
    let data = payload(5000, 6);
    let server = Server::start(vec![("/m.onnx", Route::Body(data.clone()))]);
    let dir = TempDir::new("wrongsize");
    std::fs::write(dir.path().join("m.onnx"), b"partial").expect("seed short file");
    let puller = Puller::new(&server.base_url(), dir.path()).expect("puller");
    let outcome = puller.pull_file(&entry_for("m.onnx", "m.onnx", &data)).expect("re-download");
    assert_eq!(outcome, Outcome::Downloaded { size: 5000, replaced: Some(Stale::WrongSize(7)) });
    assert_eq!(std::fs::read(dir.path().join("m.onnx")).expect("final file"), data);
    assert_eq!(server.hits("/m.onnx"), 1);
}

#[test]
fn corrupted_download_is_rejected_and_leaves_nothing() {
    let good = payload(400_000, 7);
    let mut bad = good.clone();
    bad[123_456] ^= 0x01;
    let server = Server::start(vec![("/m.onnx", Route::Body(bad.clone()))]);
    let dir = TempDir::new("corrupt");
    let file = entry_for("m.onnx", "m.onnx", &good);
    let puller = Puller::new(&server.base_url(), dir.path()).expect("puller");

    let err = puller.pull_file(&file).expect_err("a corrupted download must be rejected");
    let (expected, actual) = (sha256_hex(&good), sha256_hex(&bad));
    match &err {
        PullError::ShaMismatch { file: name, url, expected: e, actual: a } => {
            assert_eq!(name, "m.onnx");
            assert_eq!(url, &server.url("/m.onnx"));
            assert_eq!(e, &expected);
            assert_eq!(a, &actual);
        }
        other => panic!("expected a sha256 mismatch, got {other:?}"),
    }
    let message = err.to_string();
    for part in ["m.onnx", expected.as_str(), actual.as_str()] {
        assert!(message.contains(part), "{message:?} should contain {part:?}");
    }
    assert!(entries(dir.path()).is_empty(), "left behind: {:?}", entries(dir.path()));
}

#[test]
fn corrupted_download_does_not_replace_a_present_file() {
    let good = payload(1000, 20);
    let server = Server::start(vec![("/m.onnx", Route::Body(payload(1000, 22)))]);
    let dir = TempDir::new("keep");
    std::fs::write(dir.path().join("m.onnx"), b"old").expect("seed old file");
    let puller = Puller::new(&server.base_url(), dir.path()).expect("puller");
    let err = puller.pull_file(&entry_for("m.onnx", "m.onnx", &good)).expect_err("rejected");
    assert!(matches!(err, PullError::ShaMismatch { .. }), "{err:?}");
    assert_eq!(std::fs::read(dir.path().join("m.onnx")).expect("old file"), b"old");
    assert_eq!(entries(dir.path()), ["m.onnx"]);
}

#[test]
fn announced_size_mismatch_is_rejected_before_writing() {
    let good = payload(2000, 10);
    let server = Server::start(vec![("/m.onnx", Route::Body(payload(1999, 10)))]);
    let dir = TempDir::new("size");
    let puller = Puller::new(&server.base_url(), dir.path()).expect("puller");
    let err = puller.pull_file(&entry_for("m.onnx", "m.onnx", &good)).expect_err("rejected");
    match &err {
        PullError::SizeMismatch { file, expected, got, .. } => {
            assert_eq!(file, "m.onnx");
            assert_eq!(*expected, 2000);
            assert_eq!(*got, ReceivedSize::Announced(1999));
        }
        other => panic!("expected a size mismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("m.onnx") && message.contains("2000") && message.contains("1999"), "{message}");
    assert!(entries(dir.path()).is_empty(), "left behind: {:?}", entries(dir.path()));
}

#[test]
fn oversized_body_without_content_length_is_cut_off() {
    let good = payload(10_000, 11);
    let mut longer = good.clone();
    longer.extend_from_slice(&payload(600_000, 12));
    let server = Server::start(vec![("/m.onnx", Route::CloseDelimited(longer))]);
    let dir = TempDir::new("oversized");
    let puller = Puller::new(&server.base_url(), dir.path()).expect("puller");
    let err = puller.pull_file(&entry_for("m.onnx", "m.onnx", &good)).expect_err("rejected");
    assert!(
        matches!(err, PullError::SizeMismatch { expected: 10_000, got: ReceivedSize::MoreThan(10_000), .. }),
        "{err:?}"
    );
    assert!(entries(dir.path()).is_empty(), "left behind: {:?}", entries(dir.path()));
}

#[test]
fn short_body_without_content_length_is_rejected() {
    let good = payload(10_000, 13);
    let server = Server::start(vec![("/m.onnx", Route::CloseDelimited(good[..9_000].to_vec()))]);
    let dir = TempDir::new("short");
    let puller = Puller::new(&server.base_url(), dir.path()).expect("puller");
    let err = puller.pull_file(&entry_for("m.onnx", "m.onnx", &good)).expect_err("rejected");
    assert!(matches!(err, PullError::SizeMismatch { got: ReceivedSize::Received(9_000), .. }), "{err:?}");
    assert!(entries(dir.path()).is_empty(), "left behind: {:?}", entries(dir.path()));
}

#[test]
fn connection_closed_mid_body_is_an_error_and_leaves_nothing() {
    let good = payload(500_000, 14);
    let server =
        Server::start(vec![("/m.onnx", Route::Truncated { data: good[..300_000].to_vec(), announced: good.len() })]);
    let dir = TempDir::new("truncated");
    let puller = Puller::new(&server.base_url(), dir.path()).expect("puller");
    let err = puller.pull_file(&entry_for("m.onnx", "m.onnx", &good)).expect_err("rejected");
    assert!(matches!(err, PullError::Download { .. }), "{err:?}");
    assert!(err.to_string().contains(&server.url("/m.onnx")), "{err}");
    assert!(entries(dir.path()).is_empty(), "left behind: {:?}", entries(dir.path()));
}

#[test]
fn http_404_names_the_url() {
    let server = Server::start(vec![]);
    let dir = TempDir::new("404");
    let puller = Puller::new(&server.base_url(), dir.path()).expect("puller");
    let err = puller.pull_file(&entry_for("missing/m.onnx", "m.onnx", b"whatever")).expect_err("404");
    match &err {
        PullError::HttpStatus { url, status, .. } => {
            assert_eq!(url, &server.url("/missing/m.onnx"));
            assert_eq!(status, "404 Not Found");
        }
        other => panic!("expected an HTTP status error, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("404") && message.contains(&server.url("/missing/m.onnx")), "{message}");
    assert_eq!(server.hits("/missing/m.onnx"), 1);
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn redirects_are_followed() {
    let data = payload(70_000, 15);
    let server = Server::start(vec![
        ("/raw/m.onnx", Route::Redirect("/hop".into())),
        ("/hop", Route::Redirect("/blobs/real.onnx".into())),
        ("/blobs/real.onnx", Route::Body(data.clone())),
    ]);
    let dir = TempDir::new("redirect");
    let puller = Puller::new(&server.url("/raw/"), dir.path()).expect("puller");
    let outcome = puller.pull_file(&entry_for("m.onnx", "m.onnx", &data)).expect("redirect followed");
    assert_eq!(outcome, Outcome::Downloaded { size: data.len() as u64, replaced: None });
    assert_eq!(std::fs::read(dir.path().join("m.onnx")).expect("final file"), data);
    assert_eq!((server.hits("/raw/m.onnx"), server.hits("/hop"), server.hits("/blobs/real.onnx")), (1, 1, 1));
}

#[test]
fn redirect_to_a_404_names_both_urls() {
    let server = Server::start(vec![("/m.onnx", Route::Redirect("/gone.onnx".into()))]);
    let dir = TempDir::new("redirect404");
    let puller = Puller::new(&server.base_url(), dir.path()).expect("puller");
    let err = puller.pull_file(&entry_for("m.onnx", "m.onnx", b"x")).expect_err("404");
    let message = err.to_string();
    assert!(message.contains(&server.url("/m.onnx")) && message.contains("/gone.onnx"), "{message}");
    assert!(message.contains("404"), "{message}");
}

#[test]
fn unreachable_server_is_a_request_error() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let dir = TempDir::new("refused");
    let puller = Puller::new(&format!("http://127.0.0.1:{port}/"), dir.path()).expect("puller");
    let err = puller.pull_file(&entry_for("m.onnx", "m.onnx", b"x")).expect_err("connection refused");
    assert!(matches!(err, PullError::Request { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("http://127.0.0.1:{port}/m.onnx")), "{err}");
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn bad_base_urls_and_file_names_are_refused() {
    let dir = TempDir::new("bad");
    for url in ["ftp://example.com/", "example.com/models/", "not a url", "http:///x"] {
        assert!(
            matches!(Puller::new(url, dir.path()), Err(PullError::InvalidBaseUrl { .. })),
            "{url:?} should be refused"
        );
    }
    assert!(Puller::new(tandem::models::pull::DEFAULT_BASE_URL, dir.path()).is_ok(), "the default is accepted");
    let puller = Puller::new("http://127.0.0.1:9/", dir.path()).expect("puller");
    for name in ["../escape.onnx", "sub/m.onnx", "", ".hidden"] {
        let file = ModelFile { url_path: "m.onnx", file_name: String::leak(name.to_owned()), size: 1, sha256: "00" };
        assert!(matches!(puller.pull_file(&file), Err(PullError::InvalidFileName(_))), "{name:?} should be refused");
    }
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn default_table_is_the_documented_model_set() {
    let rows: Vec<_> = DEFAULT_MODEL_FILES.iter().map(|f| (f.url_path, f.file_name, f.size)).collect();
    assert_eq!(
        rows,
        [
            ("mobilenet/model/mobilenetv2-12.onnx", "mobilenet_v2.onnx", 13_964_571),
            ("resnet/model/resnet50-v2-7.onnx", "resnet50.onnx", 102_442_452),
            ("synset.txt", "imagenet_classes.txt", 31_675),
        ]
    );
    let synsets = synsets();
    let labels = DEFAULT_MODEL_FILES.iter().find(|f| f.file_name == "imagenet_classes.txt").expect("labels row");
    assert_eq!(synsets.len() as u64, labels.size);
    assert_eq!(sha256_hex(&synsets), labels.sha256);
}

// ---------------------------------------------------------------------------------------------
// The real binary with the default table.

/// The server for the default table: the real synsets file, a right-sized mobilenet of zeros
/// (sha256 mismatch) and a small wrong resnet (size mismatch).
fn default_set_server() -> (Server, Vec<u8>) {
    let synsets = synsets();
    let server = Server::start(vec![
        ("/synset.txt", Route::Body(synsets.clone())),
        ("/mobilenet/model/mobilenetv2-12.onnx", Route::Body(vec![0u8; 13_964_571])),
        ("/resnet/model/resnet50-v2-7.onnx", Route::Body(b"this is not an onnx model".to_vec())),
    ]);
    (server, synsets)
}

#[test]
fn binary_pulls_the_labels_and_rejects_corrupted_models() {
    let (server, synsets) = default_set_server();
    let dir = TempDir::new("bin");
    let model_dir = dir.path().join("models");
    let model_dir_arg = model_dir.to_str().expect("utf-8 temp path");
    let out = tandem(&["models", "pull", "--base-url", &server.base_url(), "--model-dir", model_dir_arg], &[]);
    let err = stderr(&out);

    assert!(!out.status.success(), "corrupted models must fail the command:\n{err}");
    assert_eq!(std::fs::read(model_dir.join("imagenet_classes.txt")).expect("labels landed"), synsets);
    assert_eq!(entries(&model_dir), ["imagenet_classes.txt"], "no .onnx or temporary file is left");

    // The sha256 mismatch names the file and both hashes; the size mismatch names both sizes.
    let zeros = sha256_hex(&vec![0u8; 13_964_571]);
    let mobilenet = err.lines().find(|l| l.contains("mobilenet_v2.onnx") && l.contains("sha256")).unwrap_or("");
    assert!(mobilenet.contains(DEFAULT_MODEL_FILES[0].sha256) && mobilenet.contains(&zeros), "{err}");
    let resnet = err.lines().find(|l| l.contains("resnet50.onnx") && l.contains("size")).unwrap_or("");
    assert!(resnet.contains("102442452") && resnet.contains("Content-Length 25"), "{err}");
    assert!(err.contains("2 of 3 model files failed"), "{err}");
    assert!(err.contains("imagenet_classes.txt: downloaded 31675 bytes, sha256 ok"), "{err}");

    // Second run: the labels are skipped without a request; the models are tried again.
    let again = tandem(&["models", "pull", "--base-url", &server.base_url(), "--model-dir", model_dir_arg], &[]);
    let err = stderr(&again);
    assert!(!again.status.success());
    assert!(err.contains("imagenet_classes.txt: already present"), "{err}");
    assert_eq!(server.hits("/synset.txt"), 1, "no second download");
    assert_eq!(server.hits("/mobilenet/model/mobilenetv2-12.onnx"), 2);
    assert_eq!(server.hits("/resnet/model/resnet50-v2-7.onnx"), 2);
    assert_eq!(entries(&model_dir), ["imagenet_classes.txt"]);
}

#[test]
fn binary_succeeds_when_everything_is_present_and_reads_the_environment() {
    let (server, synsets) = default_set_server();
    let dir = TempDir::new("bin-env");
    // The two models are "present" with the right sizes (sparse files), so only the labels are fetched.
    for file in &DEFAULT_MODEL_FILES[..2] {
        let handle = std::fs::File::create(dir.path().join(file.file_name)).expect("create model");
        handle.set_len(file.size).expect("size model");
    }
    let model_dir = dir.path().to_str().expect("utf-8 temp path");
    let base_url = server.base_url();
    let out =
        tandem(&["models", "pull"], &[("TANDEM_MODELS_BASE_URL", base_url.as_str()), ("TANDEM_MODEL_DIR", model_dir)]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(std::fs::read(dir.path().join("imagenet_classes.txt")).expect("labels"), synsets);
    assert!(err.contains("mobilenet_v2.onnx: already present (13964571 bytes"), "{err}");
    assert!(err.contains("resnet50.onnx: already present (102442452 bytes"), "{err}");
    assert_eq!(server.hits("/synset.txt"), 1);
    assert_eq!(server.total_hits(), 1, "present models are not downloaded");

    // --verify re-hashes them: the sparse files are not the real models, so they are fetched
    // again and the (corrupted) downloads are rejected, leaving the present files untouched.
    let out = tandem(&["models", "pull", "--verify", "--base-url", &base_url, "--model-dir", model_dir], &[]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert_eq!(server.hits("/synset.txt"), 1, "labels verified locally");
    assert_eq!(server.hits("/mobilenet/model/mobilenetv2-12.onnx"), 1);
    assert_eq!(entries(dir.path()), ["imagenet_classes.txt", "mobilenet_v2.onnx", "resnet50.onnx"]);
    assert_eq!(std::fs::metadata(dir.path().join("resnet50.onnx")).expect("kept").len(), 102_442_452);
}

#[test]
fn binary_reports_a_404_with_its_url() {
    let server = Server::start(vec![]);
    let dir = TempDir::new("bin-404");
    let out = tandem(
        &["models", "pull", "--base-url", &server.url("/nowhere"), "--model-dir", dir.path().to_str().expect("utf-8")],
        &[],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains(&format!("GET {} returned HTTP 404 Not Found", server.url("/nowhere/synset.txt"))), "{err}");
    assert!(err.contains("3 of 3 model files failed"), "{err}");
    // What to do instead: the base URL tried, and pointing the configuration at files on disk.
    let last = err.lines().last().unwrap_or("");
    assert!(last.contains(&format!("tried from {}", server.url("/nowhere/"))), "{err}");
    assert!(last.contains("--model-dir / TANDEM_MODEL_DIR"), "{err}");
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn binary_names_the_url_and_the_alternative_when_nothing_answers() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let dir = TempDir::new("bin-refused");
    let base = format!("http://127.0.0.1:{port}/");
    let out = tandem(&["models", "pull", "--base-url", &base, "--model-dir", dir.path().to_str().expect("utf-8")], &[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains(&format!("GET {base}synset.txt failed")), "{err}");
    assert!(err.contains("TANDEM_MODEL_DIR") && err.contains(&format!("tried from {base}")), "{err}");
}

#[test]
fn binary_refuses_a_bad_base_url() {
    let dir = TempDir::new("bin-bad");
    let out = tandem(
        &["models", "pull", "--base-url", "ftp://example.com/", "--model-dir", dir.path().to_str().expect("utf-8")],
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invalid base URL \"ftp://example.com/\""), "{}", stderr(&out));
}

#[test]
fn help_documents_the_flags() {
    let out = tandem(&["models", "pull", "--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--model-dir",
        "TANDEM_MODEL_DIR",
        "--base-url",
        "TANDEM_MODELS_BASE_URL",
        "https://github.com/onnx/models/raw/main/validated/vision/classification/",
        "--verify",
        "skipped without being read",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    // Only pull's own flags: the inference options are not offered here.
    assert!(!help.contains("--fast-model"), "{help}");
}

// ---------------------------------------------------------------------------------------------
// `serve --pull-missing`: only the missing default files that the configuration uses.

/// `tandem serve --pull-missing` on a free port with `args`, its environment cleared of the
/// options the tests set by flag.
fn serve_pulling(args: &[&str]) -> common::Tandem {
    let port = common::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.args(["serve", "--pull-missing", "--intra-threads", "1", "--addr", &format!("127.0.0.1:{port}")]).args(args);
    for var in [
        "TANDEM_MODEL_DIR",
        "TANDEM_FAST_MODEL",
        "TANDEM_ACCURATE_MODEL",
        "TANDEM_LABELS",
        "TANDEM_MODELS_BASE_URL",
        "TANDEM_REDIS_URL",
    ] {
        cmd.env_remove(var);
    }
    let child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("spawn");
    common::Tandem { child, base: format!("http://127.0.0.1:{port}") }
}

/// A model directory holding only the shared MobileNet (as `mobilenet_v2.onnx`, the default name).
fn dir_with_the_fast_model(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    std::os::unix::fs::symlink(common::models_dir().join("mobilenet_v2.onnx"), dir.path().join("mobilenet_v2.onnx"))
        .expect("symlink the fast model");
    dir
}

fn shared_model(name: &str) -> String {
    common::models_dir().join(name).display().to_string()
}

#[test]
fn serve_pull_missing_pulls_nothing_when_the_configured_files_are_present() {
    // The default accurate model (resnet50.onnx) is not in the shared directory: it must not
    // be pulled, as --accurate-model names another file that is there.
    let server = Server::start(vec![]);
    let models = common::models_dir().display().to_string();
    let base = server.base_url();
    let mut serve = serve_pulling(&[
        "--model-dir",
        &models,
        "--accurate-model",
        "efficientnet_lite2.onnx",
        "--models-base-url",
        &base,
    ]);
    serve.wait_ready(Duration::from_secs(90));
    assert_eq!(server.total_hits(), 0, "nothing is downloaded");
}

#[test]
fn serve_pull_missing_pulls_the_missing_default_files_it_uses() {
    let synsets = synsets();
    let server = Server::start(vec![("/synset.txt", Route::Body(synsets.clone()))]);
    let dir = dir_with_the_fast_model("serve-pull");
    let model_dir = dir.path().display().to_string();
    let accurate = shared_model("efficientnet_lite2.onnx");
    let base = server.base_url();
    let mut serve =
        serve_pulling(&["--model-dir", &model_dir, "--accurate-model", &accurate, "--models-base-url", &base]);
    serve.wait_ready(Duration::from_secs(90));
    assert_eq!(std::fs::read(dir.path().join("imagenet_classes.txt")).expect("labels pulled"), synsets);
    assert_eq!(server.hits("/synset.txt"), 1);
    assert_eq!(server.total_hits(), 1, "only the missing labels: not the models");
    assert_eq!(entries(dir.path()), ["imagenet_classes.txt", "mobilenet_v2.onnx"]);
}

#[test]
fn serve_pull_missing_refuses_a_missing_file_it_cannot_pull_before_downloading() {
    let server = Server::start(vec![("/synset.txt", Route::Body(synsets()))]);
    let dir = dir_with_the_fast_model("serve-other");
    let model_dir = dir.path().to_str().expect("utf-8 temp path");
    let out = tandem(
        &[
            "serve",
            "--pull-missing",
            "--model-dir",
            model_dir,
            "--accurate-model",
            "mine.onnx",
            "--models-base-url",
            &server.base_url(),
        ],
        &[],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("accurate-tier model file {model_dir}/mine.onnx not found")), "{err}");
    assert!(
        err.contains("pass --accurate-model (or TANDEM_ACCURATE_MODEL)") && err.contains(": mobilenet_v2.onnx)"),
        "{err}"
    );
    assert_eq!(server.total_hits(), 0, "the labels are not pulled either");
    assert_eq!(entries(dir.path()), ["mobilenet_v2.onnx"]);
}

#[test]
fn serve_pull_missing_names_the_url_and_the_alternative_when_a_download_fails() {
    let server = Server::start(vec![]);
    let dir = dir_with_the_fast_model("serve-404");
    let model_dir = dir.path().to_str().expect("utf-8 temp path");
    let accurate = shared_model("efficientnet_lite2.onnx");
    let out = tandem(
        &[
            "serve",
            "--pull-missing",
            "--model-dir",
            model_dir,
            "--accurate-model",
            &accurate,
            "--models-base-url",
            &server.base_url(),
        ],
        &[],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("GET {} returned HTTP 404", server.url("/synset.txt"))), "{err}");
    assert!(err.contains("--model-dir / TANDEM_MODEL_DIR"), "{err}");
    assert_eq!(entries(dir.path()), ["mobilenet_v2.onnx"]);
}
