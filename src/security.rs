//! The built-in security policy, configured without code: handshake credentials in
//! `ext.auth` (shared tokens, or JWTs signed with HS256 or RS256) and channel rules for
//! anonymous and authenticated sessions.
//!
//! Rules are Bayeux patterns (`/chat/*`, `/admin/**`) checked in order: for a publish the
//! first rule matching the channel decides; for a subscription, every rule that could
//! match a channel the subscription would receive is checked until one covers the whole
//! subscription, so `/**` cannot be used to listen in on a protected channel.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::broker::{HandshakeRequest, HandshakeVerdict, SecurityPolicy, SessionInfo};
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
    rules: Vec<ChannelRule>,
}

impl std::fmt::Debug for ConfiguredPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredPolicy")
            .field("anonymous", &self.anonymous)
            .field("tokens", &self.tokens.len())
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// The claims Halley reads from a JWT; `exp` is required and checked by the library.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
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
            rules: config.channels.clone(),
        })
    }

    /// Whether anything is configured at all; if not, the broker keeps its allow-all default.
    pub fn is_active(config: &SecurityConfig) -> bool {
        *config != SecurityConfig::default()
    }

    /// Checks a credential: a shared token, else a JWT. Returns the identity.
    fn authenticate(&self, credential: &str) -> Result<String, String> {
        if self
            .tokens
            .iter()
            .any(|t| bool::from(t.as_bytes().ct_eq(credential.as_bytes())))
        {
            return Ok("token".to_string());
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
        let token = jsonwebtoken::decode::<Claims>(credential, key, &validation)
            .map_err(|e| format!("JWT rejected: {e}"))?;
        Ok(token.claims.sub.unwrap_or_else(|| "jwt".to_string()))
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
                Ok(identity) => HandshakeVerdict::Allow {
                    identity: Some(identity),
                    reply_ext: Some(json!({"auth": {"authenticated": true}})),
                },
                Err(reason) => HandshakeVerdict::Deny { reason },
            },
            None if self.anonymous => HandshakeVerdict::Allow {
                identity: None,
                reply_ext: None,
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
