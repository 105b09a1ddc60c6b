//! HTTP load: closed-loop connections on `POST /predict`, plus `--mix` routes, for a fixed time.
//!
//! Each connection is one OS thread with its own keep-alive `ureq` agent that sends its next
//! request as soon as the previous answer is read. Requests started during `--warmup` are not
//! recorded; none is started after `--duration`. Latency is recorded only for 2xx answers
//! (a fast 429 would flatter the percentiles); other statuses and transport errors are counted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::stats::{Latency, Summary, cell, round3};
use super::{BenchArgs, MixRoute, Target, print_report};
use crate::api::types::PredictResponse;

/// What one connection sends, over and over.
#[derive(Debug, Clone, Copy)]
enum Route {
    Predict,
    Get(MixRoute),
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Predict => "predict",
            Route::Get(route) => route.name(),
        }
    }
}

/// When recording starts and when connections stop starting requests.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    measure_from: Instant,
    stop_at: Instant,
}

/// One route's counts; per connection, then merged.
#[derive(Debug, Default)]
struct RouteStats {
    connections: u32,
    latency: Latency,
    ok: u64,
    by_status: BTreeMap<u16, u64>,
    transport: u64,
    first_transport_error: Option<String>,
    /// 2xx `POST /predict` answers whose `job_id` was null: the job queue refused the job.
    not_queued: u64,
    last_done: Option<Instant>,
}

impl RouteStats {
    fn merge(&mut self, other: RouteStats) {
        self.connections += other.connections;
        self.latency.merge(&other.latency);
        self.ok += other.ok;
        for (status, count) in other.by_status {
            *self.by_status.entry(status).or_default() += count;
        }
        self.transport += other.transport;
        if self.first_transport_error.is_none() {
            self.first_transport_error = other.first_transport_error;
        }
        self.not_queued += other.not_queued;
        self.last_done = self.last_done.max(other.last_done);
    }
}

pub fn run(args: &BenchArgs, target: &Target) -> anyhow::Result<bool> {
    let mut connections: Vec<Route> = vec![Route::Predict; args.concurrency as usize];
    if let Some(mix) = &args.mix {
        for &(route, count) in &mix.0 {
            connections.extend(std::iter::repeat_n(Route::Get(route), count as usize));
        }
    }

    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(args.warmup);
    let schedule = Schedule { measure_from, stop_at: measure_from + Duration::from_secs_f64(args.duration) };
    let mix_interval = Duration::from_millis(args.mix_interval);
    // With --rate, predict connection i sends at started + (i + k * C) / rate, k = 0, 1, ...
    let pacing = (args.rate > 0.0).then(|| Duration::from_secs_f64(f64::from(args.concurrency) / args.rate));
    let results: Vec<(Route, RouteStats)> = std::thread::scope(|scope| {
        let handles: Vec<_> = connections
            .iter()
            .enumerate()
            .map(|(i, &route)| {
                let pace = match (route, pacing) {
                    (Route::Predict, Some(interval)) => Some(Pace {
                        next: started + interval.mul_f64(i as f64 / f64::from(args.concurrency)),
                        interval,
                    }),
                    _ => None,
                };
                (route, scope.spawn(move || connection(target, route, schedule, mix_interval, pace)))
            })
            .collect();
        handles.into_iter().map(|(route, handle)| (route, handle.join().unwrap_or_default())).collect()
    });

    // Routes in a fixed order: predict first, then the mix in the order given.
    let mut routes: Vec<(&'static str, RouteStats)> = Vec::new();
    for (route, stats) in results {
        match routes.iter_mut().find(|(name, _)| *name == route.name()) {
            Some((_, merged)) => merged.merge(stats),
            None => routes.push((route.name(), stats)),
        }
    }
    let last_done = routes.iter().filter_map(|(_, s)| s.last_done).max();
    let elapsed = last_done.map_or(args.duration, |t| t.saturating_duration_since(measure_from).as_secs_f64());
    let elapsed = elapsed.max(args.duration * 0.5).max(1e-3);

    let report = Report {
        mode: "http",
        url: target.base.clone(),
        image: target.image_name.clone(),
        image_bytes: target.image.len(),
        content_type: target.content_type,
        v2_model: args.v2.clone(),
        concurrency: args.concurrency,
        mix_interval_ms: args.mix.as_ref().map(|_| args.mix_interval),
        rate: (args.rate > 0.0).then_some(args.rate),
        warmup_s: args.warmup,
        duration_s: args.duration,
        elapsed_s: round3(elapsed),
        routes: routes
            .iter()
            .map(|(name, stats)| ((*name).to_owned(), RouteReport::new(name, stats, elapsed)))
            .collect(),
    };
    print_report(args.json, &report, || report.text())?;
    // Success: some prediction answered, or with no predict connections, every route answered.
    let answered = |name: &str| report.routes.get(name).is_some_and(|r| r.ok > 0);
    Ok(if args.concurrency == 0 { routes.iter().all(|(name, _)| answered(name)) } else { answered("predict") })
}

/// A paced connection's next send time and the gap between its sends.
#[derive(Debug, Clone, Copy)]
struct Pace {
    next: Instant,
    interval: Duration,
}

/// One connection's loop; `--mix` routes pause `mix_interval` between requests, paced predict
/// connections wait for their next slot (a late answer is not made up for with a burst).
fn connection(
    target: &Target,
    route: Route,
    schedule: Schedule,
    mix_interval: Duration,
    mut pace: Option<Pace>,
) -> RouteStats {
    let agent = target.agent();
    let get_url = match route {
        Route::Predict => String::new(),
        Route::Get(r) => target.url(r.path()),
    };
    let mut stats = RouteStats { connections: 1, ..RouteStats::default() };
    loop {
        if let Some(pace) = &mut pace {
            let now = Instant::now();
            if pace.next > now {
                std::thread::sleep(pace.next.min(schedule.stop_at) - now);
            }
            pace.next = pace.next.max(now) + pace.interval;
        }
        let started = Instant::now();
        if started >= schedule.stop_at {
            break;
        }
        let outcome = match route {
            Route::Predict => target.predict(&agent),
            Route::Get(_) => target.get(&agent, &get_url),
        };
        let done = Instant::now();
        let recorded = started >= schedule.measure_from;
        match outcome {
            Ok((status, body)) if recorded => {
                stats.last_done = Some(done);
                if (200..300).contains(&status) {
                    stats.ok += 1;
                    stats.latency.record(done - started);
                    if matches!(route, Route::Predict)
                        && serde_json::from_slice::<PredictResponse>(&body).is_ok_and(|r| r.job_id.is_none())
                    {
                        stats.not_queued += 1;
                    }
                } else {
                    *stats.by_status.entry(status).or_default() += 1;
                }
            }
            Ok(_) => {}
            Err(err) => {
                if recorded {
                    stats.last_done = Some(done);
                    stats.transport += 1;
                    stats.first_transport_error.get_or_insert_with(|| err.to_string());
                }
                // A refused connection fails at once: do not spin on it.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if matches!(route, Route::Get(_)) && !mix_interval.is_zero() {
            std::thread::sleep(mix_interval.min(schedule.stop_at.saturating_duration_since(Instant::now())));
        }
    }
    stats
}

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    url: String,
    image: String,
    image_bytes: usize,
    content_type: &'static str,
    /// `--v2`: the model every request is an Open Inference Protocol inference on, instead of
    /// `POST /predict`; absent without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    v2_model: Option<String>,
    /// `POST /predict` connections.
    concurrency: u32,
    /// Target `POST /predict` requests per second (`--rate`); absent when unpaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    /// Pause of each `--mix` connection between requests; absent without `--mix`.
    #[serde(skip_serializing_if = "Option::is_none")]
    mix_interval_ms: Option<u64>,
    warmup_s: f64,
    duration_s: f64,
    /// From the end of the warm-up to the last recorded answer.
    elapsed_s: f64,
    /// `predict` first, then the `--mix` routes.
    routes: indexmap_like::OrderedMap<RouteReport>,
}

#[derive(Debug, Serialize)]
struct RouteReport {
    connections: u32,
    /// Answers and transport errors recorded.
    requests: u64,
    ok: u64,
    /// Non-2xx answers plus transport errors.
    errors: u64,
    errors_by_status: BTreeMap<u16, u64>,
    transport_errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_transport_error: Option<String>,
    /// 2xx answers per second.
    throughput_rps: f64,
    /// Of the 2xx answers only; null when there were none.
    latency: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_queued: Option<u64>,
}

impl RouteReport {
    fn new(name: &str, stats: &RouteStats, elapsed: f64) -> Self {
        let status_errors: u64 = stats.by_status.values().sum();
        let errors = status_errors + stats.transport;
        Self {
            connections: stats.connections,
            requests: stats.ok + errors,
            ok: stats.ok,
            errors,
            errors_by_status: stats.by_status.clone(),
            transport_errors: stats.transport,
            first_transport_error: stats.first_transport_error.clone(),
            throughput_rps: round3(stats.ok as f64 / elapsed),
            latency: stats.latency.summary(),
            not_queued: (name == "predict").then_some(stats.not_queued),
        }
    }
}

impl Report {
    fn text(&self) -> String {
        let mut out = String::new();
        let connections: Vec<String> =
            self.routes.iter().map(|(name, r)| format!("{} {name}", r.connections)).collect();
        let _ = writeln!(
            out,
            "{}{} <- {} ({}, {} bytes)\n{} connections{}, {:.1} s measured after {:.1} s warm-up ({:.2} s elapsed)\n",
            self.url,
            self.v2_model.as_ref().map_or_else(String::new, |m| format!("/v2/models/{m}/infer")),
            self.image,
            self.content_type,
            self.image_bytes,
            connections.join(" + "),
            self.mix_interval_ms.map_or_else(String::new, |ms| format!(" (mix: {ms} ms between requests)")),
            self.duration_s,
            self.warmup_s,
            self.elapsed_s
        );
        let _ = writeln!(
            out,
            "{:<8} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8}",
            "route", "ok", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for (name, r) in self.routes.iter() {
            let l = r.latency.as_ref();
            let _ = writeln!(
                out,
                "{:<8} {:>9} {:>7} {:>9.1} {:>8} {:>8} {:>8} {:>8}",
                name,
                r.ok,
                r.errors,
                r.throughput_rps,
                cell(l.map(|l| l.p50_ms)),
                cell(l.map(|l| l.p90_ms)),
                cell(l.map(|l| l.p99_ms)),
                cell(l.map(|l| l.max_ms)),
            );
        }
        for (name, r) in self.routes.iter() {
            if r.errors > 0 {
                let mut parts: Vec<String> = r.errors_by_status.iter().map(|(s, n)| format!("{n} x {s}")).collect();
                if r.transport_errors > 0 {
                    let first = r.first_transport_error.as_deref().unwrap_or("");
                    parts.push(format!("{} transport (first: {first})", r.transport_errors));
                }
                let _ = writeln!(out, "{name} errors: {}", parts.join(", "));
            }
            if let Some(n) = r.not_queued.filter(|&n| n > 0) {
                let _ = writeln!(out, "{name}: {n} answers had no job id (the job queue was full)");
            }
        }
        out
    }
}

/// A string-keyed map that keeps insertion order, for a stable JSON route order.
mod indexmap_like {
    use serde::ser::{Serialize, SerializeMap, Serializer};

    #[derive(Debug)]
    pub struct OrderedMap<V>(Vec<(String, V)>);

    impl<V> FromIterator<(String, V)> for OrderedMap<V> {
        fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
            Self(iter.into_iter().collect())
        }
    }

    impl<V> OrderedMap<V> {
        pub fn get(&self, key: &str) -> Option<&V> {
            self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
        }

        pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
            self.0.iter().map(|(k, v)| (k.as_str(), v))
        }
    }

    impl<V: Serialize> Serialize for OrderedMap<V> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(Some(self.0.len()))?;
            for (k, v) in &self.0 {
                map.serialize_entry(k, v)?;
            }
            map.end()
        }
    }
}
