//! Webhook deliveries: one POST of one delivery to one receiver, and the
//! rules around it (its signature, the back-off between attempts, which URLs
//! are taken). Retrying, and what is delivered when, is the worker's.
//!
//! The contract with a receiver:
//!
//! - a `POST` of the body as it is, with `Content-Type: application/json`
//!   and a `User-Agent` of `points-ledger/<version>`;
//! - the delivery's id in [`DELIVERY_ID_HEADER`], the same on every attempt
//!   of one delivery, so a receiver can drop the ones it already has;
//! - in [`SIGNATURE_HEADER`], `sha256=` and the lower-case hex HMAC-SHA256
//!   of the body's bytes keyed by the endpoint's secret ([`signature`]): a
//!   receiver recomputes it over the bytes it read, before parsing them, and
//!   compares in constant time;
//! - a 2xx status takes the delivery; anything else fails the attempt: any
//!   other status (a redirect too, which is not followed), no connection
//!   within [`CONNECT_TIMEOUT_MS`], no answer within [`REQUEST_TIMEOUT_MS`].
//!   A failed attempt is tried again after [`backoff`].
//!
//! Only this module knows reqwest and hmac.

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::Url;
use sha2::Sha256;

mod post;
pub mod worker;

pub use post::{PostError, Poster};

/// The header carrying the delivery's id.
pub const DELIVERY_ID_HEADER: &str = "X-Points-Delivery-Id";
/// The header carrying the body's signature ([`signature`]).
pub const SIGNATURE_HEADER: &str = "X-Points-Signature";

/// Longest a connection to a receiver may take to open.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Longest a whole attempt may take, connection and answer included.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Back-off after the first failed attempt; each further one doubles it.
pub const BACKOFF_FIRST_MS: u64 = 1_000;
/// Longest back-off between two attempts.
pub const BACKOFF_MAX_MS: u64 = 300_000;

/// Longest webhook URL taken.
pub const URL_BYTES_MAX: usize = 2048;

/// The signature of `body` under `secret`: `sha256=` and the lower-case hex
/// HMAC-SHA256.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", crate::hex(&mac.finalize().into_bytes()))
}

/// The wait before the attempt after `attempt` failed ones (counted from
/// 0): 1 s, 2 s, 4 s, … up to [`BACKOFF_MAX_MS`]. Deterministic: no jitter.
pub fn backoff(attempt: u32) -> Duration {
    let doubled = 1u64.checked_shl(attempt).map_or(u64::MAX, |factor| BACKOFF_FIRST_MS.saturating_mul(factor));
    Duration::from_millis(doubled.min(BACKOFF_MAX_MS))
}

/// Whether `url` may be a webhook's: an absolute `http://` or `https://`
/// URL with a host, of at most [`URL_BYTES_MAX`] bytes, without user info
/// or fragment. The error is a short reason.
pub fn validate_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ())
}

/// The URL a webhook posts to, checked as [`validate_url`] says.
fn parse_url(url: &str) -> Result<Url, String> {
    if url.len() > URL_BYTES_MAX {
        return Err(format!("longer than {URL_BYTES_MAX} bytes"));
    }
    // The parser would drop these silently; a URL that has them is a typo.
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains spaces or control characters".into());
    }
    let parsed = Url::parse(url).map_err(|e| format!("not an absolute URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("scheme {} is not http or https", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("user info (user:password@) is not taken".into());
    }
    if parsed.fragment().is_some() {
        return Err("a fragment (#...) is not taken".into());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_sha256_of_rfc_4231_test_case_2() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_signature_depends_on_the_secret() {
        assert_ne!(signature(b"one", b"{}"), signature(b"two", b"{}"));
    }

    #[test]
    fn the_backoff_doubles_from_one_second() {
        let secs: Vec<u64> = (0..6).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32]);
    }

    #[test]
    fn the_backoff_stops_at_five_minutes() {
        assert_eq!(backoff(8), Duration::from_secs(256));
        for attempt in [9, 10, 40, 63, 64, 65, 1000, u32::MAX] {
            assert_eq!(backoff(attempt), Duration::from_secs(300), "attempt {attempt}");
        }
    }

    #[test]
    fn http_and_https_urls_with_a_host_are_taken() {
        for url in [
            "http://example.com",
            "https://example.com/hooks/points?tenant=7",
            "https://127.0.0.1:8443/",
            "http://[::1]:8080/hook",
        ] {
            assert_eq!(validate_url(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn other_urls_are_refused_with_a_reason() {
        let long = format!("https://example.com/{}", "a".repeat(URL_BYTES_MAX));
        for (url, reason) in [
            ("", "not an absolute URL: relative URL without a base"),
            ("/hooks/points", "not an absolute URL: relative URL without a base"),
            ("example.com/hook", "not an absolute URL: relative URL without a base"),
            ("ftp://example.com/hook", "scheme ftp is not http or https"),
            ("file:///etc/passwd", "scheme file is not http or https"),
            ("mailto:ops@example.com", "scheme mailto is not http or https"),
            ("http://", "not an absolute URL: empty host"),
            ("https://user:secret@example.com/", "user info (user:password@) is not taken"),
            ("https://user@example.com/", "user info (user:password@) is not taken"),
            ("https://example.com/hook#part", "a fragment (#...) is not taken"),
            ("https://example.com/hook#", "a fragment (#...) is not taken"),
            (" https://example.com/", "contains spaces or control characters"),
            ("https://example.com/a\nb", "contains spaces or control characters"),
            (&long, "longer than 2048 bytes"),
        ] {
            assert_eq!(validate_url(url), Err(reason.to_string()), "{url:?}");
        }
    }

    #[test]
    fn a_url_of_exactly_the_longest_length_is_taken() {
        let base = "https://example.com/";
        let url = format!("{base}{}", "a".repeat(URL_BYTES_MAX - base.len()));
        assert_eq!(validate_url(&url), Ok(()));
    }
}
