//! Webhooks against real `tandem` processes and a real local receiver: a job's final state is
//! POSTed to its `callback_url`, signed (verified here with the Standard Webhooks reference
//! library), retried until the receiver takes it, refused at `POST /predict` for hosts not on
//! `--webhook-allow`, and, with Redis, not lost when the worker sending it is killed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Tandem, agent, as_error, as_job, images_dir, job_id, post_bytes, predict, redis_url, unique_prefix};
use serde_json::Value;
use tandem::jobs::JobStatus;

/// A Standard Webhooks secret: `whsec_` + base64 of 24 bytes.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver does with one request, in the order requests arrive.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    /// Holds the request unanswered (the sender is killed meanwhile).
    Hang,
}

struct Received {
    at: Instant,
    path: String,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// Checks the signature as any receiver would, with the Standard Webhooks library.
    fn verify(&self) {
        let webhook = standardwebhooks::Webhook::new(SECRET).expect("secret");
        webhook.verify(&self.body, &self.headers).expect("the signature verifies");
        let wrong = standardwebhooks::Webhook::new("whsec_dGhpcyBpcyBub3QgdGhlIGtleSBhdCBhbGw=").expect("secret");
        assert!(wrong.verify(&self.body, &self.headers).is_err(), "another key does not verify it");
    }
}

/// A receiver on a free loopback port; each request it reads arrives on the channel.
fn receiver(answers: Vec<Answer>) -> (u16, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let answer = answers.get(n).copied().unwrap_or(Answer::Status(200));
            let send = send.clone();
            std::thread::spawn(move || handle(stream, answer, &send));
        }
    });
    (port, receive)
}

fn handle(mut stream: TcpStream, answer: Answer, send: &mpsc::Sender<Received>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(clone) = stream.try_clone() else { return };
    let mut reader = BufReader::new(clone);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut headers = axum::http::HeaderMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.trim_end().split_once(':')
            && let (Ok(name), Ok(value)) =
                (axum::http::HeaderName::from_bytes(name.trim().as_bytes()), value.trim().parse())
        {
            headers.insert(name, value);
        }
    }
    let length = headers.get("content-length").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let _ = send.send(Received { at: Instant::now(), path, headers, body });
    match answer {
        Answer::Status(status) => {
            let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(reply.as_bytes());
        }
        Answer::Hang => std::thread::sleep(Duration::from_secs(60)),
    }
}

fn photo() -> Vec<u8> {
    std::fs::read(images_dir().join("sample_01.jpg")).expect("photo")
}

fn metric(base: &str, series: &str) -> f64 {
    let text =
        agent().get(&format!("{base}/metrics")).call().expect("metrics").into_body().read_to_string().expect("text");
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

fn next(received: &mpsc::Receiver<Received>, within: Duration, what: &str) -> Received {
    received.recv_timeout(within).unwrap_or_else(|_| panic!("no webhook within {within:?}: {what}"))
}

#[test]
fn a_receiver_that_fails_twice_gets_the_signed_webhook_on_the_third_attempt() {
    let (port, received) = receiver(vec![Answer::Status(500), Answer::Status(503), Answer::Status(200)]);
    let allow = format!("127.0.0.1:{port}");
    let serve = Tandem::serve(&["--webhook-allow", &allow, "--webhook-secret", SECRET]);
    let hook = format!("http://127.0.0.1:{port}/hook?who=test");
    let url = format!("{}/predict?callback_url={}", serve.base, urlencode(&hook));
    let id = job_id(&predict(&url, "image/jpeg", &photo()));

    let attempts: Vec<Received> =
        (1..=3).map(|n| next(&received, Duration::from_secs(60), &format!("attempt {n}"))).collect();
    for attempt in &attempts {
        assert_eq!(attempt.path, "/hook?who=test", "the callback URL as given");
        assert_eq!(attempt.header("webhook-id"), id, "every attempt carries the job's id as webhook-id");
        assert_eq!(attempt.header("content-type"), "application/json");
        attempt.verify();
        let job = as_job(&attempt.json());
        assert_eq!((job.job_id.to_string(), job.status), (id.clone(), JobStatus::Completed));
        assert!(job.result.is_some(), "the body is the completed job, with its result");
    }
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(900), "a pause before the second attempt: {gaps:?}");
    assert!(gaps[1] >= gaps[0] + Duration::from_millis(500), "the pause doubles: {gaps:?}");
    println!("webhooks | pauses between attempts after 500, 500: {gaps:?}");
    assert!(received.recv_timeout(Duration::from_secs(3)).is_err(), "delivered once: no attempt after the 200");
    let (_, body) = common::get_json(&serve.url(&format!("/job/{id}")));
    assert_eq!(body, attempts[2].json(), "the webhook's body is GET /job/{{id}}'s");
    assert_eq!(metric(&serve.base, "tandem_webhook_attempts_total{outcome=\"failed\"}"), 2.0);
    assert_eq!(metric(&serve.base, "tandem_webhook_attempts_total{outcome=\"delivered\"}"), 1.0);

    // Hosts not on --webhook-allow, and URLs that are not http(s), are refused before any work.
    for (callback, code) in [
        (format!("http://127.0.0.2:{port}/hook"), "callback_not_allowed"),
        (format!("http://127.0.0.1:{}/hook", port.wrapping_add(1)), "callback_not_allowed"),
        ("http://169.254.169.254/latest/meta-data".to_owned(), "callback_not_allowed"),
        (format!("file:///etc/passwd?{port}"), "invalid_callback_url"),
    ] {
        let url = format!("{}/predict?callback_url={}", serve.base, urlencode(&callback));
        let (status, body) = post_bytes(&url, "image/jpeg", &photo());
        assert_eq!((status, as_error(&body).error.code.as_str()), (422, code), "{callback}: {body}");
    }
    assert!(received.recv_timeout(Duration::from_millis(500)).is_err(), "nothing was sent for refused URLs");
}

#[test]
fn without_webhook_allow_a_callback_url_is_refused() {
    let serve = Tandem::serve(&[]);
    let url = format!("{}/predict?callback_url={}", serve.base, urlencode("http://127.0.0.1:9/hook"));
    let (status, body) = post_bytes(&url, "image/jpeg", &photo());
    assert_eq!((status, as_error(&body).error.code.as_str()), (422, "webhooks_disabled"), "{body}");
}

#[test]
fn redis_a_worker_killed_mid_delivery_does_not_lose_the_webhook_and_a_canceled_job_gets_one() {
    let (port, received) = receiver(vec![Answer::Status(200), Answer::Hang, Answer::Status(200)]);
    let allow = format!("127.0.0.1:{port}");
    let redis = redis_url();
    let prefix = unique_prefix("webhooks");
    let queue = ["--redis-url", &redis, "--redis-prefix", &prefix, "--reclaim-after", "2"];
    let hooks = ["--webhook-allow", &allow, "--webhook-secret", SECRET, "--webhook-timeout", "60"];
    let serve_args: Vec<&str> = queue.iter().chain(&hooks[..2]).copied().collect();
    let serve = Tandem::serve(&serve_args);
    let worker_args: Vec<&str> = queue.iter().chain(&hooks).copied().collect();
    let callback = format!("callback_url={}", urlencode(&format!("http://127.0.0.1:{port}/hook")));
    let predict_url = format!("{}/predict?{callback}", serve.base);

    // No worker yet: the job waits, and is canceled. Its webhook says so.
    let canceled = job_id(&predict(&predict_url, "image/jpeg", &photo()));
    let response = agent().delete(&serve.url(&format!("/job/{canceled}"))).call().expect("DELETE");
    assert_eq!(response.status(), 200);
    let mut first_worker = Tandem::worker(&worker_args);
    let hook = next(&received, Duration::from_secs(60), "the canceled job's webhook");
    assert_eq!(hook.header("webhook-id"), canceled);
    hook.verify();
    assert_eq!(as_job(&hook.json()).status, JobStatus::Canceled);

    // The next job's webhook is held unanswered by the receiver; its sender is killed.
    let id = job_id(&predict(&predict_url, "image/jpeg", &photo()));
    let held = next(&received, Duration::from_secs(60), "the held attempt");
    assert_eq!(held.header("webhook-id"), id);
    first_worker.child.kill().expect("kill the worker");
    let _ = first_worker.child.wait();
    let killed_at = Instant::now();

    let _second_worker = Tandem::worker(&worker_args);
    let again = next(&received, Duration::from_secs(60), "the webhook taken over by the other worker");
    assert_eq!(again.header("webhook-id"), id, "the same webhook, sent again");
    again.verify();
    let job = as_job(&again.json());
    assert_eq!((job.status, job.result.is_some()), (JobStatus::Completed, true));
    println!("webhook taken over and delivered {:?} after its sender was killed", again.at - killed_at);
    assert!(received.recv_timeout(Duration::from_secs(4)).is_err(), "delivered, then not again");
}

/// Percent-encodes a URL for a query parameter.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
