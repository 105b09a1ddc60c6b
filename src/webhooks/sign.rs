//! Signing in the Standard Webhooks layout (<https://www.standardwebhooks.com>): headers
//! `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`
//! (`v1,` + base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`), so receivers can verify with
//! any Standard Webhooks library.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signing key. `whsec_<base64>` (the Standard Webhooks form) is base64-decoded; any other
/// text is used as its UTF-8 bytes.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn parse(text: &str) -> Result<Self, String> {
        let key = match text.strip_prefix("whsec_") {
            Some(encoded) => {
                STANDARD.decode(encoded).map_err(|err| format!("--webhook-secret: whsec_ with bad base64: {err}"))?
            }
            None => text.as_bytes().to_vec(),
        };
        if key.len() < 16 {
            return Err("--webhook-secret must be at least 16 bytes (e.g. whsec_ + 32 random bytes in base64)".into());
        }
        Ok(Self(key))
    }

    /// The `webhook-signature` header's value.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's test suite.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn short_or_malformed_secrets_are_refused() {
        assert!(Secret::parse("short").is_err());
        assert!(Secret::parse("whsec_***").is_err());
        assert!(Secret::parse("a plain secret of enough length").is_ok());
    }
}
