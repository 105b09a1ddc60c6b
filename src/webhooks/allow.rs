//! `--webhook-allow`: the only hosts a webhook may be sent to, so that `callback_url` cannot
//! make the service reach an address its operator did not choose (an internal API, a cloud
//! metadata endpoint). Checked when `POST /predict` takes the URL (422 otherwise) and again by
//! the sender, whose own list may be narrower.

use axum::http::Uri;

/// Longest `callback_url` taken.
pub const MAX_URL_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("webhooks are not enabled on this server (it has no --webhook-allow)")]
    Disabled,
    #[error("callback_url is not an absolute http(s) URL: {0}")]
    Malformed(String),
    #[error("callback_url's host {0:?} is not allowed here (--webhook-allow)")]
    NotAllowed(String),
}

/// One allowed host: `example.com` (any port), `example.com:8443` (that port), or
/// `*.example.com` (its subdomains, any port). Hosts compare case-insensitively; IP addresses
/// are written as they appear in URLs (`127.0.0.1`, `[::1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    host: String,
    port: Option<u16>,
    subdomains: bool,
}

/// The hosts webhooks may go to; empty means webhooks are off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    hosts: Vec<AllowedHost>,
}

impl AllowList {
    /// Parses `--webhook-allow` values (see [`AllowedHost`]).
    pub fn parse(values: &[String]) -> Result<Self, String> {
        let hosts = values
            .iter()
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
            .map(parse_host)
            .collect::<Result<_, _>>()?;
        Ok(Self { hosts })
    }

    pub fn is_enabled(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// Checks a `callback_url`: absolute `http`/`https`, no user info, a host on the list.
    pub fn check(&self, url: &str) -> Result<(), CallbackError> {
        if !self.is_enabled() {
            return Err(CallbackError::Disabled);
        }
        let malformed = |why: &str| CallbackError::Malformed(why.to_owned());
        if url.len() > MAX_URL_LEN {
            return Err(malformed("longer than 2048 bytes"));
        }
        let uri: Uri = url.parse().map_err(|_| malformed("unparsable"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(malformed("the scheme must be http or https"));
        }
        let authority = uri.authority().ok_or_else(|| malformed("no host"))?;
        // Credentials in the URL would be sent along with every attempt, and logged nowhere
        // they could be seen; refuse them rather than guess.
        if authority.as_str().contains('@') {
            return Err(malformed("user info is not allowed"));
        }
        let host = authority.host().to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        let allowed = self.hosts.iter().any(|allowed| {
            let host_ok = if allowed.subdomains {
                host.strip_suffix(allowed.host.as_str()).is_some_and(|rest| rest.ends_with('.') && rest.len() > 1)
            } else {
                host == allowed.host
            };
            host_ok && allowed.port.is_none_or(|p| p == port)
        });
        if allowed { Ok(()) } else { Err(CallbackError::NotAllowed(authority.as_str().to_owned())) }
    }
}

fn parse_host(value: &str) -> Result<AllowedHost, String> {
    let bad = || format!("--webhook-allow {value:?}: expected a host, host:port or *.domain");
    let (subdomains, rest) = match value.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    // Parsed as an authority, the way URLs will be, so `[::1]:8080` and `host:80` read alike.
    let authority: axum::http::uri::Authority = rest.parse().map_err(|_| bad())?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(bad());
    }
    Ok(AllowedHost { host: authority.host().to_ascii_lowercase(), port: authority.port_u16(), subdomains })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(values: &[&str]) -> AllowList {
        AllowList::parse(&values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>()).expect("valid list")
    }

    #[test]
    fn only_listed_hosts_and_ports_pass() {
        let allow = list(&["hooks.example.com", "127.0.0.1:9000", "*.example.org", "[::1]"]);
        assert_eq!(allow.check("https://hooks.example.com/tandem?x=1"), Ok(()));
        assert_eq!(allow.check("http://HOOKS.example.com:8080/"), Ok(()));
        assert_eq!(allow.check("http://127.0.0.1:9000/hook"), Ok(()));
        assert_eq!(allow.check("http://a.b.example.org/"), Ok(()));
        assert_eq!(allow.check("http://[::1]:5/"), Ok(()));
        for refused in [
            "http://127.0.0.1:9001/hook",
            "http://127.0.0.1/hook",
            "http://example.org/",
            "http://evilexample.org/",
            "http://hooks.example.com.evil.net/",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:9000/",
        ] {
            assert!(matches!(allow.check(refused), Err(CallbackError::NotAllowed(_))), "{refused} passed");
        }
    }

    #[test]
    fn malformed_urls_and_an_empty_list_are_refused() {
        let allow = list(&["example.com"]);
        for url in ["ftp://example.com/", "example.com/hook", "/hook", "http://user:pw@example.com/", "http://"] {
            assert!(matches!(allow.check(url), Err(CallbackError::Malformed(_))), "{url} passed");
        }
        assert_eq!(AllowList::default().check("http://example.com/"), Err(CallbackError::Disabled));
        assert!(AllowList::parse(&["http://example.com".into()]).is_err());
        assert!(AllowList::parse(&["user@example.com".into()]).is_err());
    }
}
