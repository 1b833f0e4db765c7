//! The built-in security policy, configured without code: handshake credentials in
//! `ext.auth` (shared tokens, or JWTs signed with HS256 or RS256) and channel rules for
//! anonymous and authenticated sessions.
//!
//! Rules are Bayeux patterns (`/chat/*`, `/admin/**`) checked in order: for a publish the
//! first rule matching the channel decides; for a subscription, every rule that could
//! match a channel the subscription would receive is checked until one covers the whole
//! subscription, so `/**` cannot be used to listen in on a protected channel.
//!
//! A JWT's `exp`, `nbf` and `iat` are checked here to the millisecond with the configured
//! leeway (the library's checks work in whole seconds with a 60 s default). With
//! `jwt_expiry_ends_session`, a session lives until its token's `exp` plus the leeway, and
//! a client extends it by presenting a fresh token on [`REFRESH_CHANNEL`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::broker::{
    Broker, HandshakeRequest, HandshakeVerdict, SecurityPolicy, ServiceCall, ServiceReply,
    SessionInfo,
};
use crate::config::{Access, ChannelRule, ConfigError, SecurityConfig};
use crate::protocol::ChannelName;

/// The policy built from [`SecurityConfig`].
pub struct ConfiguredPolicy {
    anonymous: bool,
    tokens: Vec<String>,
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, ms.
    leeway_ms: u64,
    expiry_ends_session: bool,
    rules: Vec<ChannelRule>,
}

/// Where a session bound to its token's expiry presents a fresh token (`{"token": JWT}`)
/// to live on without a new handshake. A service channel rather than an `ext` on
/// `/meta/connect`: the connect path, held by every parked client, stays untouched, and
/// CometD's `remoteCall` gets an answer (the new expiry, or why the token was refused).
pub const REFRESH_CHANNEL: &str = "/service/halley/refresh";

/// Who a credential proved to be, and until when the credential holds.
struct Authenticated {
    identity: String,
    /// A JWT's `exp` plus the leeway; `None` for a shared token.
    valid_until: Option<SystemTime>,
}

impl std::fmt::Debug for ConfiguredPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredPolicy")
            .field("anonymous", &self.anonymous)
            .field("tokens", &self.tokens.len())
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("leeway_ms", &self.leeway_ms)
            .field("expiry_ends_session", &self.expiry_ends_session)
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// The claims Halley reads from a JWT. NumericDates are seconds and may have a fraction;
/// a non-number fails decoding, so the token is refused.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: f64,
    nbf: Option<f64>,
    iat: Option<f64>,
}

impl Claims {
    /// Checks the token's time window against `now_ms` (Unix ms): refused once `exp` has
    /// passed, before `nbf`, or when issued (`iat`) in the future, each beyond the leeway
    /// (RFC 7519 4.1.4, 4.1.5). Returns until when the token holds, leeway included.
    fn check_times(&self, now_ms: f64, leeway_ms: u64) -> Result<Option<SystemTime>, String> {
        let leeway = leeway_ms as f64;
        let until_ms = self.exp * 1000.0 + leeway;
        if now_ms >= until_ms {
            return Err("JWT rejected: expired".into());
        }
        if self.nbf.is_some_and(|nbf| now_ms < nbf * 1000.0 - leeway) {
            return Err("JWT rejected: not valid yet (nbf)".into());
        }
        if self.iat.is_some_and(|iat| now_ms < iat * 1000.0 - leeway) {
            return Err("JWT rejected: issued in the future (iat)".into());
        }
        // An `exp` too far out for the clock binds nothing.
        Ok(Duration::try_from_secs_f64(until_ms / 1000.0)
            .ok()
            .and_then(|d| UNIX_EPOCH.checked_add(d)))
    }
}

/// `at` in Unix milliseconds, as a session's expiry is told to clients.
fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn unix_now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

impl ConfiguredPolicy {
    /// Builds the policy, reading key files and checking rule patterns.
    pub fn new(config: &SecurityConfig) -> Result<ConfiguredPolicy, ConfigError> {
        for rule in &config.channels {
            ChannelName::parse(&rule.pattern).map_err(|e| {
                ConfigError::Invalid(format!("channel rule {:?}: {e}", rule.pattern))
            })?;
        }
        let rs256 = match &config.jwt_rs256_public_key {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::Invalid(format!("cannot read {}: {e}", path.display()))
                })?;
                Some(DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "{} is not an RSA public key: {e}",
                        path.display()
                    ))
                })?)
            }
            None => None,
        };
        Ok(ConfiguredPolicy {
            anonymous: config.anonymous,
            tokens: config.tokens.clone(),
            hs256: config
                .jwt_hs256_secret
                .as_deref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            rs256,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            leeway_ms: config.jwt_leeway,
            expiry_ends_session: config.jwt_expiry_ends_session,
            rules: config.channels.clone(),
        })
    }

    /// Makes this the broker's policy and, when sessions end with their tokens, serves
    /// [`REFRESH_CHANNEL`] with it.
    pub fn install(self, broker: &Broker) {
        let policy = Arc::new(self);
        if policy.expiry_ends_session {
            let weak = broker.downgrade();
            let judge = policy.clone();
            // A literal, valid name: registration cannot fail.
            let _ = broker.register_service(REFRESH_CHANNEL, move |call: &ServiceCall<'_>| {
                let Some(broker) = weak.upgrade() else {
                    return ServiceReply::Silent;
                };
                judge.refresh(&broker, call)
            });
        }
        broker.set_policy(policy);
    }

    /// Answers a refresh: the fresh JWT must hold and name the session's identity.
    fn refresh(&self, broker: &Broker, call: &ServiceCall<'_>) -> ServiceReply {
        let data = call.data_value();
        let refused = |why: String| {
            tracing::info!(client_id = call.client_id, %why, "token refresh refused");
            ServiceReply::Failure(json!({ "error": why }))
        };
        let Some(token) = data.get("token").and_then(Value::as_str) else {
            return refused("no token in data.token".into());
        };
        let until = match self.authenticate(token) {
            Ok(Authenticated {
                identity,
                valid_until: Some(until),
            }) => broker
                .extend_session(call.client_id, &identity, until)
                .map(|()| until)
                .map_err(|e| e.to_string()),
            Ok(_) => Err("only a JWT can refresh a session".into()),
            Err(why) => Err(why),
        };
        match until {
            Ok(until) => ServiceReply::Answer(json!({ "expires": unix_ms(until) })),
            Err(why) => refused(why),
        }
    }

    /// Whether anything is configured at all; if not, the broker keeps its allow-all default.
    pub fn is_active(config: &SecurityConfig) -> bool {
        *config != SecurityConfig::default()
    }

    /// Checks a credential: a shared token, else a JWT.
    fn authenticate(&self, credential: &str) -> Result<Authenticated, String> {
        if self
            .tokens
            .iter()
            .any(|t| bool::from(t.as_bytes().ct_eq(credential.as_bytes())))
        {
            return Ok(Authenticated {
                identity: "token".to_string(),
                valid_until: None,
            });
        }
        let header = jsonwebtoken::decode_header(credential)
            .map_err(|_| "credential is neither a known token nor a JWT".to_string())?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| format!("JWT algorithm {:?} is not accepted", header.alg))?;
        let mut validation = Validation::new(header.alg);
        // The library requires `exp` to be there; its value, `nbf` and `iat` are checked
        // by `Claims::check_times`, to the millisecond and with the stated leeway.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        // jsonwebtoken checks iss/aud only when present; configured ones are required.
        let mut required = vec!["exp"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let claims = jsonwebtoken::decode::<Claims>(credential, key, &validation)
            .map_err(|e| format!("JWT rejected: {e}"))?
            .claims;
        let valid_until = claims.check_times(unix_now_ms(), self.leeway_ms)?;
        Ok(Authenticated {
            identity: claims.sub.unwrap_or_else(|| "jwt".to_string()),
            valid_until,
        })
    }

    fn allows(access: Access, session: Option<&SessionInfo<'_>>) -> bool {
        match access {
            Access::Anyone => true,
            // Server-side publishes (no session) are trusted.
            Access::Authenticated => session.is_none_or(|s| s.is_authenticated()),
            Access::Nobody => session.is_none(),
        }
    }
}

/// The credential of a handshake: `ext.auth.token`, or `ext.auth` when it is a string.
fn credential(ext: Option<&Value>) -> Option<&str> {
    let auth = ext?.get("auth")?;
    auth.as_str().or_else(|| auth.get("token")?.as_str())
}

impl SecurityPolicy for ConfiguredPolicy {
    fn can_handshake(&self, request: &HandshakeRequest<'_>) -> HandshakeVerdict {
        match credential(request.ext) {
            Some(credential) => match self.authenticate(credential) {
                Ok(auth) => {
                    let expires = auth.valid_until.filter(|_| self.expiry_ends_session);
                    // A bound session is told when it ends, so it can refresh in time.
                    let reply_ext = match expires {
                        Some(at) => {
                            json!({"auth": {"authenticated": true, "expires": unix_ms(at)}})
                        }
                        None => json!({"auth": {"authenticated": true}}),
                    };
                    HandshakeVerdict::Allow {
                        identity: Some(auth.identity),
                        reply_ext: Some(reply_ext),
                        expires,
                    }
                }
                Err(reason) => HandshakeVerdict::Deny { reason },
            },
            None if self.anonymous => HandshakeVerdict::Allow {
                identity: None,
                reply_ext: None,
                expires: None,
            },
            None => HandshakeVerdict::Deny {
                reason: "no credentials in ext.auth and anonymous sessions are off".into(),
            },
        }
    }

    fn can_subscribe(&self, session: &SessionInfo<'_>, channel: &ChannelName<'_>) -> bool {
        for rule in &self.rules {
            let Ok(pattern) = ChannelName::parse(&rule.pattern) else {
                continue;
            };
            if pattern.overlaps(channel) && !Self::allows(rule.subscribe, Some(session)) {
                return false;
            }
            if pattern.contains(channel) {
                break;
            }
        }
        true
    }

    fn can_publish(&self, session: Option<&SessionInfo<'_>>, channel: &ChannelName<'_>) -> bool {
        self.rules
            .iter()
            .find(|rule| ChannelName::parse(&rule.pattern).is_ok_and(|p| p.matches(channel)))
            .is_none_or(|rule| Self::allows(rule.publish, session))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn rule(pattern: &str, subscribe: Access, publish: Access) -> ChannelRule {
        ChannelRule {
            pattern: pattern.into(),
            subscribe,
            publish,
        }
    }

    fn policy(edit: impl FnOnce(&mut SecurityConfig)) -> ConfiguredPolicy {
        let mut config = SecurityConfig::default();
        edit(&mut config);
        ConfiguredPolicy::new(&config).expect("valid policy")
    }

    fn handshake(policy: &ConfiguredPolicy, ext: Value) -> HandshakeVerdict {
        policy.can_handshake(&HandshakeRequest {
            ext: Some(&ext),
            browser_id: None,
        })
    }

    fn jwt(secret: &str, exp_offset: i64, sub: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
            + exp_offset;
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": sub, "exp": exp}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn identity(verdict: HandshakeVerdict) -> Option<String> {
        match verdict {
            HandshakeVerdict::Allow { identity, .. } => identity,
            HandshakeVerdict::Deny { reason } => panic!("denied: {reason}"),
        }
    }

    #[test]
    fn shared_tokens_and_anonymous_access() {
        let p = policy(|c| {
            c.tokens = vec!["s3cret".into()];
            c.anonymous = false;
        });
        assert_eq!(
            identity(handshake(&p, json!({"auth": {"token": "s3cret"}}))),
            Some("token".into())
        );
        assert_eq!(
            identity(handshake(&p, json!({"auth": "s3cret"}))),
            Some("token".into())
        );
        assert!(matches!(
            handshake(&p, json!({"auth": {"token": "nope"}})),
            HandshakeVerdict::Deny { .. }
        ));
        assert!(matches!(
            handshake(&p, json!({})),
            HandshakeVerdict::Deny { .. }
        ));
        let open = policy(|c| c.tokens = vec!["s3cret".into()]);
        assert_eq!(identity(handshake(&open, json!({}))), None);
        assert!(
            matches!(
                handshake(&open, json!({"auth": "wrong"})),
                HandshakeVerdict::Deny { .. }
            ),
            "bad credentials are refused even when anonymous sessions are allowed"
        );
    }

    #[test]
    fn jwts_are_verified_expired_and_forged_ones_refused() {
        let p = policy(|c| c.jwt_hs256_secret = Some("k".repeat(32)));
        let good = jwt(&"k".repeat(32), 600, "alice");
        assert_eq!(
            identity(handshake(&p, json!({"auth": {"token": good}}))),
            Some("alice".into())
        );
        let expired = jwt(&"k".repeat(32), -600, "alice");
        assert!(matches!(
            handshake(&p, json!({"auth": {"token": expired}})),
            HandshakeVerdict::Deny { .. }
        ));
        let forged = jwt(&"x".repeat(32), 600, "mallory");
        assert!(matches!(
            handshake(&p, json!({"auth": {"token": forged}})),
            HandshakeVerdict::Deny { .. }
        ));
        let rs256_not_configured = policy(|c| c.tokens = vec!["t".into()]);
        let token = jwt(&"k".repeat(32), 600, "alice");
        assert!(matches!(
            handshake(&rs256_not_configured, json!({"auth": {"token": token}})),
            HandshakeVerdict::Deny { .. }
        ));
    }

    #[test]
    fn exp_nbf_and_iat_are_checked_to_the_millisecond_with_the_leeway() {
        let claims = |exp: f64, nbf: Option<f64>, iat: Option<f64>| Claims {
            sub: None,
            exp,
            nbf,
            iat,
        };
        let now = 1_000_000_000.0;
        let until = claims(1_000_000.0, None, None)
            .check_times(now + 29_999.0, 30_000)
            .expect("inside the leeway");
        assert_eq!(unix_ms(until.expect("bounded")), 1_000_030_000);
        assert!(
            claims(1_000_000.0, None, None)
                .check_times(now + 30_000.0, 30_000)
                .is_err()
        );
        assert!(
            claims(1_000_000.0, None, None)
                .check_times(now + 1.0, 0)
                .is_err()
        );
        let nbf = claims(2_000_000.0, Some(1_000_030.0), None);
        assert!(nbf.check_times(now - 0.5, 30_000).is_err());
        assert!(nbf.check_times(now, 30_000).is_ok());
        let iat = claims(2_000_000.0, None, Some(1_000_010.0));
        assert!(iat.check_times(now, 5_000).is_err());
        assert!(iat.check_times(now, 10_000).is_ok());
        // An exp past what the clock can hold binds nothing, and panics nowhere.
        assert_eq!(claims(1e300, None, None).check_times(now, 0), Ok(None));
    }

    #[test]
    fn rs256_jwts_are_checked_with_the_public_key() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol-tests/fixtures");
        let p = policy(|c| {
            c.jwt_rs256_public_key = Some(format!("{fixtures}/jwt-rs256-public.pem").into());
            c.jwt_issuer = Some("issuer".into());
        });
        let private = std::fs::read(format!("{fixtures}/jwt-rs256-private.pem")).expect("key");
        let key = EncodingKey::from_rsa_pem(&private).expect("pem");
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 600;
        let sign = |claims: Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).expect("encode")
        };
        let good = sign(json!({"sub": "bob", "exp": exp, "iss": "issuer"}));
        assert_eq!(
            identity(handshake(&p, json!({"auth": {"token": good}}))),
            Some("bob".into())
        );
        let wrong_issuer = sign(json!({"sub": "bob", "exp": exp, "iss": "other"}));
        assert!(matches!(
            handshake(&p, json!({"auth": {"token": wrong_issuer}})),
            HandshakeVerdict::Deny { .. }
        ));
        // An HS256 token signed with the public key as secret (algorithm confusion) is refused.
        let public = std::fs::read(format!("{fixtures}/jwt-rs256-public.pem")).expect("key");
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "mallory", "exp": exp, "iss": "issuer"}),
            &EncodingKey::from_secret(&public),
        )
        .expect("encode");
        assert!(matches!(
            handshake(&p, json!({"auth": {"token": confused}})),
            HandshakeVerdict::Deny { .. }
        ));
    }

    #[test]
    fn channel_rules_for_publish_use_the_first_match() {
        let p = policy(|c| {
            c.channels = vec![
                rule("/public/**", Access::Anyone, Access::Anyone),
                rule("/admin/**", Access::Authenticated, Access::Nobody),
                rule("/**", Access::Anyone, Access::Authenticated),
            ]
        });
        let anon = SessionInfo {
            client_id: "a",
            identity: None,
        };
        let user = SessionInfo {
            client_id: "u",
            identity: Some("alice"),
        };
        let name = |s| ChannelName::parse(s).expect("valid");
        assert!(p.can_publish(Some(&anon), &name("/public/x")));
        assert!(!p.can_publish(Some(&anon), &name("/chat/x")));
        assert!(p.can_publish(Some(&user), &name("/chat/x")));
        assert!(!p.can_publish(Some(&user), &name("/admin/x")));
        assert!(
            p.can_publish(None, &name("/admin/x")),
            "the server itself may publish"
        );
    }

    #[test]
    fn wildcard_subscriptions_cannot_reach_protected_channels() {
        let p = policy(|c| {
            c.channels = vec![
                rule("/public/**", Access::Anyone, Access::Anyone),
                rule("/admin/**", Access::Authenticated, Access::Nobody),
            ]
        });
        let anon = SessionInfo {
            client_id: "a",
            identity: None,
        };
        let user = SessionInfo {
            client_id: "u",
            identity: Some("alice"),
        };
        let name = |s| ChannelName::parse(s).expect("valid");
        assert!(p.can_subscribe(&anon, &name("/public/news")));
        assert!(p.can_subscribe(&anon, &name("/chat/*")));
        assert!(!p.can_subscribe(&anon, &name("/admin/logs")));
        assert!(
            !p.can_subscribe(&anon, &name("/**")),
            "/** would receive /admin/**"
        );
        assert!(p.can_subscribe(&user, &name("/**")));
    }

    #[test]
    fn bad_rules_and_key_files_are_config_errors() {
        let bad_rule = SecurityConfig {
            channels: vec![rule("/a/*/b", Access::Anyone, Access::Anyone)],
            ..SecurityConfig::default()
        };
        assert!(ConfiguredPolicy::new(&bad_rule).is_err());
        let missing_key = SecurityConfig {
            jwt_rs256_public_key: Some("/nonexistent/key.pem".into()),
            ..SecurityConfig::default()
        };
        assert!(ConfiguredPolicy::new(&missing_key).is_err());
    }
}
