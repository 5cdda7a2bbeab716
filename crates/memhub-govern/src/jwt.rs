//! JWT bearer tokens: HS256 with a shared secret, RS256/ES256 with a PEM public key
//! or a JWKS file. `alg` is checked against the configured keys before any
//! signature work, so `none` and algorithm-confusion tokens are refused by name.

use std::path::PathBuf;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use memhub_types::{Error, ErrorCode, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::principal::{Principal, Role};

/// Token verification settings (`[auth.jwt]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// The environment variable holding the HS256 secret (default `MEMHUB_JWT_SECRET`).
    pub hs256_secret_env: String,
    /// A PEM public key (RSA for RS256, EC P-256 for ES256).
    pub public_key_file: Option<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`); tokens pick a key by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// When set, `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` must contain it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hs256_secret_env: "MEMHUB_JWT_SECRET".into(),
            public_key_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway_seconds: 30,
        }
    }
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens against the configured keys.
pub struct JwtVerifier {
    keys: Vec<Key>,
    config: JwtConfig,
}

fn rejected(code: ErrorCode, detail: impl Into<String>) -> Error {
    Error::new(code, detail)
}

fn config_error(detail: String) -> Error {
    Error::new(ErrorCode::InvalidField, detail)
}

impl JwtVerifier {
    /// Load the keys `config` names (`hs256_secret` is the secret's value, if any).
    /// `None` when no key is configured: tokens are then not accepted at all.
    pub fn new(config: &JwtConfig, hs256_secret: Option<&[u8]>) -> Result<Option<JwtVerifier>> {
        let mut keys = Vec::new();
        if let Some(secret) = hs256_secret {
            if secret.len() < 32 {
                return Err(config_error(format!(
                    "{} must hold at least 32 bytes (a shorter HS256 secret can be brute-forced)",
                    config.hs256_secret_env
                )));
            }
            keys.push(Key { kid: None, alg: Algorithm::HS256, key: DecodingKey::from_secret(secret) });
        }
        if let Some(path) = &config.public_key_file {
            let pem = std::fs::read(path)
                .map_err(|e| config_error(format!("cannot read the JWT public key {}: {e}", path.display())))?;
            let key = match DecodingKey::from_rsa_pem(&pem) {
                Ok(k) => Key { kid: None, alg: Algorithm::RS256, key: k },
                Err(_) => Key {
                    kid: None,
                    alg: Algorithm::ES256,
                    key: DecodingKey::from_ec_pem(&pem).map_err(|e| {
                        config_error(format!("{} is neither an RSA nor an EC public key: {e}", path.display()))
                    })?,
                },
            };
            keys.push(key);
        }
        if let Some(path) = &config.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| config_error(format!("cannot read the JWKS file {}: {e}", path.display())))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| config_error(format!("invalid JWKS file {}: {e}", path.display())))?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| config_error(format!("unusable key in {}: {e}", path.display())))?;
                let alg = match jwk.common.key_algorithm.map(|a| a.to_string()) {
                    Some(a) => {
                        a.parse::<Algorithm>().map_err(|e| config_error(format!("JWKS key algorithm {a}: {e}")))?
                    }
                    None => match &jwk.algorithm {
                        jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                        _ => {
                            return Err(config_error(format!(
                                "JWKS {}: only RSA and EC keys are supported",
                                path.display()
                            )))
                        }
                    },
                };
                if !matches!(alg, Algorithm::RS256 | Algorithm::ES256) {
                    return Err(config_error(format!("JWKS {}: algorithm {alg:?} is not supported", path.display())));
                }
                keys.push(Key { kid: jwk.common.key_id.clone(), alg, key });
            }
        }
        Ok((!keys.is_empty()).then(|| JwtVerifier { keys, config: config.clone() }))
    }

    fn accepted(&self) -> String {
        let mut names: Vec<String> = self.keys.iter().map(|k| format!("{:?}", k.alg)).collect();
        names.dedup();
        names.join(", ")
    }

    /// The principal a token names, or a 401 error whose code says what is wrong.
    pub fn verify(&self, token: &str) -> Result<Principal> {
        let header = token.split('.').next().filter(|_| token.split('.').count() == 3).ok_or_else(|| {
            rejected(ErrorCode::InvalidCredentials, "not a JWT (expected three dot-separated parts) nor an API key")
        })?;
        let header: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| rejected(ErrorCode::InvalidCredentials, "the token header is not base64url JSON"))?;
        let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let alg: Option<Algorithm> = alg_name.parse().ok();
        let kid = header.get("kid").and_then(Value::as_str);
        let alg = alg.filter(|a| self.keys.iter().any(|k| k.alg == *a)).ok_or_else(|| {
            rejected(
                ErrorCode::TokenAlgorithmRejected,
                format!("token algorithm {alg_name:?} is not accepted (accepted: {})", self.accepted()),
            )
        })?;
        let mut candidates = self.keys.iter().filter(|k| k.alg == alg);
        let key = match kid {
            Some(kid) if self.keys.iter().any(|k| k.kid.is_some()) => {
                candidates.find(|k| k.kid.as_deref() == Some(kid))
            }
            _ => candidates.next(),
        }
        .ok_or_else(|| {
            rejected(ErrorCode::InvalidCredentials, format!("no configured key has kid {:?}", kid.unwrap_or("")))
        })?;
        let mut validation = Validation::new(key.alg);
        validation.leeway = self.config.leeway_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.config.issuer {
            validation.set_issuer(&[iss]);
        }
        let claims = jsonwebtoken::decode::<Value>(token, &key.key, &validation).map_err(|e| {
            let (code, detail) = match e.kind() {
                ErrorKind::ExpiredSignature => (ErrorCode::CredentialsExpired, "the token has expired".to_string()),
                ErrorKind::ImmatureSignature => {
                    (ErrorCode::CredentialsExpired, "the token is not valid yet (nbf)".into())
                }
                ErrorKind::InvalidAlgorithm => {
                    (ErrorCode::TokenAlgorithmRejected, "the token's algorithm does not match its key".into())
                }
                ErrorKind::MissingRequiredClaim(c) => {
                    (ErrorCode::TokenClaimsInvalid, format!("the token has no {c:?} claim"))
                }
                ErrorKind::InvalidIssuer => {
                    (ErrorCode::TokenClaimsInvalid, "the token's iss is not the configured issuer".into())
                }
                ErrorKind::InvalidAudience => {
                    (ErrorCode::TokenClaimsInvalid, "the token's aud does not include the configured audience".into())
                }
                ErrorKind::InvalidClaimFormat(c) => {
                    (ErrorCode::TokenClaimsInvalid, format!("the token's {c:?} claim has the wrong type"))
                }
                ErrorKind::InvalidSignature => {
                    (ErrorCode::InvalidCredentials, "the token's signature is not valid".into())
                }
                _ => (ErrorCode::InvalidCredentials, format!("the token is not valid: {e}")),
            };
            rejected(code, detail)
        })?;
        principal_from_claims(&claims.claims)
    }
}

fn principal_from_claims(c: &Value) -> Result<Principal> {
    let claim_error = |detail: String| rejected(ErrorCode::TokenClaimsInvalid, detail);
    let text = |name: &str| -> Result<String> {
        c.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| claim_error(format!("the token needs a non-empty string claim {name:?}")))
    };
    let list = |name: &str| -> Result<Option<Vec<String>>> {
        match c.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|_| claim_error(format!("the claim {name:?} must be a list of strings"))),
        }
    };
    let flag = |name: &str| c.get(name).and_then(Value::as_bool).unwrap_or(false);
    let sub = text("sub")?;
    let role: Role = text("role")?.parse().map_err(claim_error)?;
    let superadmin = flag("superadmin");
    if superadmin && role != Role::Admin {
        return Err(claim_error("only an admin token can be a superadmin".into()));
    }
    Ok(Principal {
        id: format!("jwt:{sub}"),
        role,
        tenant: text("tenant")?,
        user_id: Some(sub),
        systems: list("systems")?,
        kinds: list("kinds")?,
        can_read: flag("read"),
        superadmin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn claims() -> Value {
        json!({"sub": "ann", "tenant": "acme", "role": "user", "exp": now() + 600})
    }

    fn hs(claims: &Value, secret: &[u8]) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn verifier(config: JwtConfig) -> JwtVerifier {
        JwtVerifier::new(&config, Some(SECRET)).unwrap().unwrap()
    }

    fn code(v: &JwtVerifier, token: &str) -> ErrorCode {
        v.verify(token).unwrap_err().code
    }

    #[test]
    fn good_tokens_name_their_principal() {
        let v = verifier(JwtConfig::default());
        let p = v.verify(&hs(&claims(), SECRET)).unwrap();
        assert_eq!(
            (p.role, p.tenant.as_str(), p.user_id.as_deref(), p.id.as_str()),
            (Role::User, "acme", Some("ann"), "jwt:ann")
        );
        let mut c = claims();
        c["role"] = json!("service");
        c["systems"] = json!(["slack"]);
        c["read"] = json!(true);
        let p = v.verify(&hs(&c, SECRET)).unwrap();
        assert_eq!((p.systems, p.can_read), (Some(vec!["slack".to_string()]), true));
    }

    #[test]
    fn bad_tokens_get_a_401_code_that_says_why() {
        let v = verifier(JwtConfig {
            issuer: Some("idp".into()),
            audience: Some("memhub".into()),
            leeway_seconds: 5,
            ..JwtConfig::default()
        });
        let good = || {
            let mut c = claims();
            c["iss"] = json!("idp");
            c["aud"] = json!("memhub");
            c
        };
        assert!(v.verify(&hs(&good(), SECRET)).is_ok());
        assert_eq!(code(&v, &hs(&good(), b"another secret of thirty-two bytes!")), ErrorCode::InvalidCredentials);
        let mut c = good();
        c["exp"] = json!(now() - 60);
        assert_eq!(code(&v, &hs(&c, SECRET)), ErrorCode::CredentialsExpired);
        let mut c = good();
        c["exp"] = json!(now() - 2);
        assert!(v.verify(&hs(&c, SECRET)).is_ok(), "within the leeway");
        let mut c = good();
        c["nbf"] = json!(now() + 600);
        assert_eq!(code(&v, &hs(&c, SECRET)), ErrorCode::CredentialsExpired);
        for missing in ["exp", "sub", "tenant", "role"] {
            let mut c = good();
            c.as_object_mut().unwrap().remove(missing);
            assert_eq!(code(&v, &hs(&c, SECRET)), ErrorCode::TokenClaimsInvalid, "{missing}");
        }
        let mut c = good();
        c["iss"] = json!("evil");
        assert_eq!(code(&v, &hs(&c, SECRET)), ErrorCode::TokenClaimsInvalid);
        let mut c = good();
        c["aud"] = json!("other");
        assert_eq!(code(&v, &hs(&c, SECRET)), ErrorCode::TokenClaimsInvalid);
        let mut c = good();
        c["role"] = json!("root");
        assert_eq!(code(&v, &hs(&c, SECRET)), ErrorCode::TokenClaimsInvalid);

        // alg none: header {"alg":"none"}, no signature.
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&good()));
        assert_eq!(code(&v, &none), ErrorCode::TokenAlgorithmRejected);
        // HS512 is not configured.
        let hs512 = encode(&Header::new(Algorithm::HS512), &good(), &EncodingKey::from_secret(SECRET)).unwrap();
        assert_eq!(code(&v, &hs512), ErrorCode::TokenAlgorithmRejected);
        // A signature-stripped or tampered token.
        let token = hs(&good(), SECRET);
        let (head, _) = token.rsplit_once('.').unwrap();
        let mut elevated = good();
        elevated["role"] = json!("admin");
        let forged =
            format!("{}.{}.{}", head.split('.').next().unwrap(), b64(&elevated), token.rsplit('.').next().unwrap());
        assert_eq!(code(&v, &forged), ErrorCode::InvalidCredentials);
        assert_eq!(code(&v, "not.a.jwt"), ErrorCode::InvalidCredentials);
        assert_eq!(code(&v, "garbage"), ErrorCode::InvalidCredentials);
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        // Read at run time: the target dir is shared between checkouts, so the
        // compile-time path can name another (even a deleted) one.
        let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        std::path::Path::new(&dir).join("tests/fixtures").join(name)
    }

    #[test]
    fn public_keys_and_jwks_verify_their_algorithms_only() {
        let es = JwtVerifier::new(
            &JwtConfig { public_key_file: Some(fixture("es256-public.pem")), ..JwtConfig::default() },
            None,
        )
        .unwrap()
        .unwrap();
        let es_key = EncodingKey::from_ec_pem(&std::fs::read(fixture("es256-private.pem")).unwrap()).unwrap();
        let token = encode(&Header::new(Algorithm::ES256), &claims(), &es_key).unwrap();
        assert_eq!(es.verify(&token).unwrap().user_id.as_deref(), Some("ann"));
        // Algorithm confusion: an HS256 token "signed" with the public key text.
        let public_pem = std::fs::read(fixture("es256-public.pem")).unwrap();
        assert_eq!(code(&es, &hs(&claims(), &public_pem)), ErrorCode::TokenAlgorithmRejected);

        let rs = JwtVerifier::new(&JwtConfig { jwks_file: Some(fixture("jwks.json")), ..JwtConfig::default() }, None)
            .unwrap()
            .unwrap();
        let rs_key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rs256-private.pem")).unwrap()).unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("test-rsa".into());
        assert!(rs.verify(&encode(&header, &claims(), &rs_key).unwrap()).is_ok());
        header.kid = Some("unknown".into());
        assert_eq!(code(&rs, &encode(&header, &claims(), &rs_key).unwrap()), ErrorCode::InvalidCredentials);
        assert_eq!(
            code(&rs, &encode(&Header::new(Algorithm::ES256), &claims(), &es_key).unwrap()),
            ErrorCode::TokenAlgorithmRejected
        );
    }

    #[test]
    fn short_secrets_are_refused_at_start() {
        assert!(JwtVerifier::new(&JwtConfig::default(), Some(b"short")).is_err());
        assert!(JwtVerifier::new(&JwtConfig::default(), None).unwrap().is_none());
    }
}
