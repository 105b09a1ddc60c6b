//! Where the Redis primary is: one fixed address (`redis://`, `unix://`), or whichever server
//! Redis Sentinel names primary (`redis+sentinel://`), asked again whenever a connection is made
//! anew, so `serve` and workers follow a failover without a restart.
//!
//! ```text
//! redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]
//! ```
//!
//! The hosts are the sentinels (port 26379 unless given); `SERVICE` is the name they monitor the
//! primary under (`sentinel monitor SERVICE ...`); the user, password and database are the
//! primary's (and its replicas'), not the sentinels'.

use std::time::Duration;

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, ConnectionAddr, IntoConnectionInfo as _, RedisError, RedisResult};

/// The URL scheme that names sentinels rather than a server.
const SENTINEL_SCHEME: &str = "redis+sentinel://";
const SENTINEL_PORT: u16 = 26379;
/// How long asking the sentinels for the primary (and checking it says it is one) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis URL that cannot work, with what was wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidUrl(String);

pub enum Endpoint {
    Direct(Client),
    Sentinel {
        /// Behind a lock: a lookup needs it mutably (it caches its connections to the sentinels).
        client: tokio::sync::Mutex<SentinelClient>,
        service: String,
        sentinels: Vec<String>,
    },
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, InvalidUrl> {
        match url.strip_prefix(SENTINEL_SCHEME) {
            Some(rest) => parse_sentinel(rest),
            None => url.into_connection_info().and_then(Client::open).map(Endpoint::Direct).map_err(|err| {
                InvalidUrl(format!(
                    "expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], unix:///PATH/redis.sock or \
                     {SENTINEL_SCHEME}[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB] \
                     (TLS `rediss://` is not built in); {err}"
                ))
            }),
        }
    }

    /// A client for the primary: the fixed one, or the one the sentinels name now.
    pub async fn client(&self) -> RedisResult<Client> {
        match self {
            Endpoint::Direct(client) => Ok(client.clone()),
            Endpoint::Sentinel { client, service, .. } => {
                let mut sentinel = client.lock().await;
                match tokio::time::timeout(LOOKUP_TIMEOUT, sentinel.async_get_client()).await {
                    Ok(found) => found,
                    Err(_) => Err(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no sentinel named the primary of {service:?} within {} ms",
                            LOOKUP_TIMEOUT.as_millis()
                        ),
                    ))),
                }
            }
        }
    }

    pub fn is_sentinel(&self) -> bool {
        matches!(self, Endpoint::Sentinel { .. })
    }

    /// For log lines: never the URL, which may hold a password.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Direct(client) => client.get_connection_info().addr().to_string(),
            Endpoint::Sentinel { service, sentinels, .. } => {
                format!("{service} (primary named by sentinels {})", sentinels.join(","))
            }
        }
    }
}

fn parse_sentinel(rest: &str) -> Result<Endpoint, InvalidUrl> {
    let form = || format!("expected {SENTINEL_SCHEME}[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]");
    // The credentials end at the last `@` (a password may hold `@` or `/`); the hosts at the first
    // `/` after it. Nothing before that `@` is ever quoted in an error.
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((credentials, rest)) => (Some(credentials), rest),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/').ok_or_else(|| InvalidUrl(format!("{}: no /SERVICE", form())))?;
    let addrs = hosts.split(',').map(parse_host).collect::<Result<Vec<_>, _>>()?;
    let mut segments = path.split('/');
    let service =
        segments.next().filter(|s| !s.is_empty()).ok_or_else(|| InvalidUrl(format!("{}: no SERVICE", form())))?;
    let db = match segments.next().filter(|s| !s.is_empty()) {
        Some(db) => Some(db.parse::<i64>().map_err(|_| InvalidUrl(format!("database {db:?} is not a number")))?),
        None => None,
    };
    if segments.any(|s| !s.is_empty()) {
        return Err(InvalidUrl(format!("{}: too many path segments", form())));
    }
    let sentinels = addrs
        .iter()
        .map(|addr| match addr {
            ConnectionAddr::Tcp(host, port) if host.contains(':') => format!("[{host}]:{port}"),
            other => other.to_string(),
        })
        .collect();
    let mut builder = SentinelClientBuilder::new(addrs, service, SentinelServerType::Master)
        .map_err(|err| InvalidUrl(err.to_string()))?;
    if let Some(credentials) = credentials {
        // As in a `redis://` URL: `USER`, `:PASSWORD` or `USER:PASSWORD`.
        let (user, password) = match credentials.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (credentials, None),
        };
        let user = decode(user)?;
        if !user.is_empty() {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = password {
            builder = builder.set_client_to_redis_password(decode(password)?);
        }
    }
    if let Some(db) = db {
        builder = builder.set_client_to_redis_db(db);
    }
    let client = builder.build().map_err(|err| InvalidUrl(err.to_string()))?;
    Ok(Endpoint::Sentinel { client: tokio::sync::Mutex::new(client), service: service.to_owned(), sentinels })
}

/// `HOST[:PORT]` or `[IPV6][:PORT]`.
fn parse_host(host: &str) -> Result<ConnectionAddr, InvalidUrl> {
    let bad = || InvalidUrl(format!("sentinel address {host:?}: expected HOST[:PORT]"));
    let (name, port) = match host.strip_prefix('[') {
        Some(bracketed) => {
            let (name, after) = bracketed.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
            };
            (name, port)
        }
        None => match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    // An IPv6 address goes in brackets: `fe80::1` would read as host `fe80`, port `:1`.
    if name.is_empty() || (!host.starts_with('[') && port.is_some_and(|p| p.contains(':'))) {
        return Err(bad());
    }
    let port = match port {
        Some(port) => port.parse::<u16>().map_err(|_| bad())?,
        None => SENTINEL_PORT,
    };
    Ok(ConnectionAddr::Tcp(name.to_owned(), port))
}

/// Percent-decoding of the user and password, as in a `redis://` URL.
fn decode(part: &str) -> Result<String, InvalidUrl> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| InvalidUrl("the user or password is not valid UTF-8 once percent-decoded".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinels(url: &str) -> (String, Vec<String>) {
        match Endpoint::parse(url) {
            Ok(Endpoint::Sentinel { service, sentinels, .. }) => (service, sentinels),
            Ok(Endpoint::Direct(_)) => panic!("{url}: not read as sentinels"),
            Err(err) => panic!("{url}: {err}"),
        }
    }

    #[test]
    fn sentinel_urls_name_the_sentinels_and_the_service() {
        assert_eq!(
            sentinels("redis+sentinel://10.0.0.1,10.0.0.2:26380,[::1]:5000/mymaster"),
            ("mymaster".into(), vec!["10.0.0.1:26379".into(), "10.0.0.2:26380".into(), "[::1]:5000".into()])
        );
        assert_eq!(sentinels("redis+sentinel://:p%40ss@s1/jobs/2").0, "jobs");
        // A password may hold `@`, `/`, `,` and `:`: everything up to the last `@` is credentials.
        assert_eq!(sentinels("redis+sentinel://u:p@a/s,s:x@s1:7/jobs"), ("jobs".into(), vec!["s1:7".to_owned()]));
        assert_eq!(sentinels("redis+sentinel://user:pw@s1:1/jobs/").1, vec!["s1:1".to_owned()]);
    }

    #[test]
    fn malformed_urls_are_refused_with_the_form_that_works() {
        for url in [
            "redis+sentinel://s1",
            "redis+sentinel://s1/",
            "redis+sentinel://s1:port/svc",
            "redis+sentinel://,s2/svc",
            "redis+sentinel://s1/svc/db",
            "redis+sentinel://s1/svc/1/extra",
            "redis+sentinel://fe80::1/svc",
            "redis+sentinel://[::1]junk/svc",
            "http://example.com",
        ] {
            let Err(err) = Endpoint::parse(url) else { panic!("{url}: accepted") };
            assert!(err.to_string().contains("expected") || err.to_string().contains("not a number"), "{url}: {err}");
        }
        assert!(matches!(Endpoint::parse("redis://127.0.0.1:6379/0"), Ok(Endpoint::Direct(_))));
    }
}
