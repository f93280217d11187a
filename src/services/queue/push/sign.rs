//! The `datalayer-signature` header: a JWT signed with HS256 whose claims
//! bind the delivery to its exact body and URL, for a short time.
//!
//! ```text
//! header  {"alg":"HS256","typ":"JWT"}
//! claims  {"iss":"datalayer","sub":<url>,"iat":<s>,"nbf":<s>,"exp":<s + 300>,
//!          "jti":<message id>,"queue":<queue>,
//!          "body":<base64url(sha256(body)), no padding>}
//! ```
//!
//! Message ids are per queue: a receiver that deduplicates keys on the
//! signed (`queue`, `jti`), never on the unsigned headers.
//!
//! ```text
//! ```
//!
//! The signing key file holds the current key and, optionally, the next
//! one. The service signs with the current key; receivers verify with both,
//! so a rotation (publish the next key to receivers, then make it the
//! current one) needs no downtime. The file is read at start-up: a
//! rotation takes effect at each replica's restart.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a signature is valid after it is made.
pub const VALID_FOR_S: u64 = 300;
/// Shortest key, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    /// The queue the message is of (absent in signatures of a version that
    /// did not sign it).
    #[serde(default)]
    pub queue: String,
    pub body: String,
}

/// The keys: the first signs.
#[derive(Clone)]
pub struct Signer {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys)", self.keys.len())
    }
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

pub fn body_hash(body: &[u8]) -> String {
    B64.encode(Sha256::digest(body))
}

impl Signer {
    /// One or two keys, one per line (blank lines and `#` comments skipped).
    pub fn parse(text: &str) -> Result<Self, String> {
        let keys: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.as_bytes().to_vec())
            .collect();
        if keys.is_empty() || keys.len() > 2 {
            return Err(format!(
                "holds {} keys; it needs the current key and at most one next key, one per line",
                keys.len()
            ));
        }
        if let Some(short) = keys.iter().position(|k| k.len() < MIN_KEY_BYTES) {
            return Err(format!(
                "key {} is shorter than {MIN_KEY_BYTES} bytes (make one with `openssl rand -hex 32`)",
                short + 1
            ));
        }
        Ok(Self { keys })
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("queue.push.signing_key_file {}: {e}", path.display()))?;
        Self::parse(&text)
            .map_err(|e| format!("queue.push.signing_key_file {}: {e}", path.display()))
    }

    /// The header value for a POST of `body` to `url`.
    pub fn sign(
        &self,
        url: &str,
        body: &[u8],
        message_id: &str,
        queue: &str,
        now_s: u64,
    ) -> String {
        let claims = Claims {
            iss: "datalayer".to_owned(),
            sub: url.to_owned(),
            iat: now_s,
            nbf: now_s,
            exp: now_s + VALID_FOR_S,
            jti: message_id.to_owned(),
            queue: queue.to_owned(),
            body: body_hash(body),
        };
        let head = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{head}.{claims}");
        let sig = B64.encode(mac(&self.keys[0], signed.as_bytes()));
        format!("{signed}.{sig}")
    }
}

/// Checks a signature as a receiver does: a known key, the URL, the body,
/// and the time (with `leeway_s`). The claims when it holds.
pub fn verify(
    token: &str,
    keys: &[&[u8]],
    url: &str,
    body: &[u8],
    now_s: u64,
    leeway_s: u64,
) -> Result<Claims, &'static str> {
    let mut parts = token.split('.');
    let (Some(head), Some(claims), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT");
    };
    let sig = B64.decode(sig).map_err(|_| "bad signature encoding")?;
    let signed = format!("{head}.{claims}");
    let known = keys.iter().any(|k| {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(k).expect("HMAC takes any key");
        m.update(signed.as_bytes());
        m.verify_slice(&sig).is_ok()
    });
    if !known {
        return Err("signed by no known key");
    }
    let claims: Claims = B64
        .decode(claims)
        .ok()
        .and_then(|c| serde_json::from_slice(&c).ok())
        .ok_or("bad claims")?;
    if claims.sub != url {
        return Err("signed for another URL");
    }
    if claims.body != body_hash(body) {
        return Err("the body changed");
    }
    if now_s + leeway_s < claims.nbf {
        return Err("not valid yet");
    }
    if now_s > claims.exp + leeway_s {
        return Err("expired");
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_key_url_body_and_time() {
        let signer = Signer::parse("current-key-0123456789\nnext-key-0123456789ab\n").unwrap();
        let token = signer.sign("http://h/x", b"body", "7", "q", 1000);
        let keys: [&[u8]; 2] = [b"current-key-0123456789", b"next-key-0123456789ab"];
        let claims = verify(&token, &keys, "http://h/x", b"body", 1000, 0).unwrap();
        assert_eq!((claims.jti.as_str(), claims.queue.as_str()), ("7", "q"));
        assert_eq!(
            verify(&token, &keys, "http://h/y", b"body", 1000, 0),
            Err("signed for another URL")
        );
        assert_eq!(
            verify(&token, &keys, "http://h/x", b"bodY", 1000, 0),
            Err("the body changed")
        );
        assert_eq!(
            verify(&token, &keys, "http://h/x", b"body", 2000, 0),
            Err("expired")
        );
        assert_eq!(
            verify(&token, &keys, "http://h/x", b"body", 900, 0),
            Err("not valid yet")
        );
        assert_eq!(
            verify(&token, &keys[1..], "http://h/x", b"body", 1000, 0),
            Err("signed by no known key")
        );
        // After a rotation the next key signs, and receivers that know it verify.
        let rotated = Signer::parse("next-key-0123456789ab\nthird-key-0123456789").unwrap();
        let token = rotated.sign("http://h/x", b"body", "8", "q", 1000);
        assert!(verify(&token, &keys, "http://h/x", b"body", 1000, 0).is_ok());
        assert!(Signer::parse("").is_err());
        assert!(Signer::parse("short").is_err());
        assert!(
            Signer::parse("a-key-of-enough-bytes\nb-key-of-enough-bytes\nc-key-of-enough-bytes")
                .is_err()
        );
    }
}
