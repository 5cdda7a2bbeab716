//! Signatures as the Standard Webhooks specification defines them: the secret is
//! `whsec_` + base64 of random bytes; a delivery carries `webhook-id`,
//! `webhook-timestamp` (Unix seconds) and `webhook-signature` = `v1,` + base64 of
//! HMAC-SHA256(secret bytes, `{id}.{timestamp}.{body}`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use memhub_types::{Error, ErrorCode};
use sha2::Sha256;

/// A new signing secret (24 random bytes).
pub fn new_secret() -> Result<String, Error> {
    let mut key = [0u8; 24];
    getrandom::fill(&mut key).map_err(|e| Error::new(ErrorCode::InternalError, format!("no randomness: {e}")))?;
    Ok(format!("whsec_{}", STANDARD.encode(key)))
}

fn key_bytes(secret: &str) -> Result<Vec<u8>, Error> {
    STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|e| Error::new(ErrorCode::InternalError, format!("a stored webhook secret is not base64: {e}")))
}

/// The `webhook-signature` header value for one delivery.
pub fn signature(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Result<String, Error> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key_bytes(secret)?)
        .map_err(|e| Error::new(ErrorCode::InternalError, e.to_string()))?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the specification's reference implementations (secret,
    /// id, timestamp and payload from the Standard Webhooks test suite).
    #[test]
    fn matches_the_specifications_example() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_fresh_and_decodable() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert_eq!(key_bytes(&a).unwrap().len(), 24);
    }
}
