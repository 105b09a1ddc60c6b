//! `tandem healthcheck`: the container image's `HEALTHCHECK`, so the image needs no curl.
//!
//! It asks `GET /health/live` of the listener this container's process has: `serve`'s
//! (`--addr`, `TANDEM_ADDR`) or a worker's (`--metrics-addr`, `TANDEM_METRICS_ADDR`), read from
//! the same variables the process itself reads. One image runs either command, so it asks
//! each address it is given and is healthy when one of them answers 200.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use clap::Args;

use super::args::parse_seconds;

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// `serve`'s address (`HOST:PORT`); an unspecified host (`0.0.0.0`, `[::]`) is asked on loopback.
    #[arg(long, env = "TANDEM_ADDR", default_value = "127.0.0.1:8000")]
    pub addr: String,

    /// A worker's `--metrics-addr`, asked too when set.
    #[arg(long, env = "TANDEM_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// Seconds each request may take.
    #[arg(long, env = "TANDEM_HEALTHCHECK_TIMEOUT", default_value_t = 3.0, value_parser = parse_seconds)]
    pub timeout: f64,

    /// Sent as `Authorization: Bearer KEY` (the first of `--api-key`), for `--protect-health`.
    #[arg(long = "api-key", env = "TANDEM_API_KEY", value_delimiter = ',', hide_env_values = true, value_name = "KEY")]
    pub api_keys: Vec<String>,
}

/// `Ok(true)`: one of the addresses answered 200; the others' failures are not printed then.
pub fn run(args: &HealthcheckArgs) -> anyhow::Result<bool> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs_f64(args.timeout)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut failures = Vec::new();
    for addr in std::iter::once(&args.addr).chain(&args.metrics_addr) {
        let url = match live_url(addr) {
            Ok(url) => url,
            Err(err) => {
                failures.push(format!("{addr}: {err}"));
                continue;
            }
        };
        let mut request = agent.get(&url);
        if let Some(key) = args.api_keys.first() {
            request = request.header("authorization", format!("Bearer {}", key.trim()));
        }
        match request.call() {
            Ok(response) if response.status() == 200 => {
                println!("healthy: {url}");
                return Ok(true);
            }
            Ok(response) => failures.push(format!("{url}: HTTP {}", response.status())),
            Err(err) => failures.push(format!("{url}: {err}")),
        }
    }
    for failure in failures {
        eprintln!("unhealthy: {failure}");
    }
    Ok(false)
}

/// `http://HOST:PORT/health/live` for a listen address; unspecified hosts become loopback.
fn live_url(addr: &str) -> Result<String, String> {
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        let ip = match socket.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        return Ok(format!("http://{}/health/live", SocketAddr::new(ip, socket.port())));
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(format!("http://{host}:{port}/health/live"))
        }
        _ => Err("expected HOST:PORT".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::live_url;

    #[test]
    fn unspecified_hosts_are_asked_on_loopback() {
        assert_eq!(live_url("0.0.0.0:8000").as_deref(), Ok("http://127.0.0.1:8000/health/live"));
        assert_eq!(live_url("[::]:9100").as_deref(), Ok("http://[::1]:9100/health/live"));
        assert_eq!(live_url("10.0.0.5:81").as_deref(), Ok("http://10.0.0.5:81/health/live"));
        assert_eq!(live_url("localhost:8000").as_deref(), Ok("http://localhost:8000/health/live"));
        assert!(live_url("8000").is_err());
        assert!(live_url("host:port").is_err());
    }
}
