//! Secrets read from their conventional environment variables (`OPENAI_API_KEY`, ...,
//! `FREESWITCH_ESL_PASSWORD`, `VOICEBRIDGE_WEBHOOK_SECRET`). `load` fills it, the
//! section compilers read it; it has its own module so neither depends on the other.

use super::kinds::ProviderKind;

/// The key webhooks are signed with (kept out of the config file).
pub(crate) const WEBHOOK_SECRET_VAR: &str = "VOICEBRIDGE_WEBHOOK_SECRET";
/// The Twilio account's auth token (`[twilio] auth_token`).
const TWILIO_AUTH_TOKEN_VAR: &str = "TWILIO_AUTH_TOKEN";
/// The Event Socket password.
const ESL_PASSWORD_VAR: &str = "FREESWITCH_ESL_PASSWORD";

/// Secrets from the conventional variables, used when the config leaves them empty.
#[derive(Debug, Default)]
pub(crate) struct EnvSecrets {
    /// Per provider kind (by [`ProviderKind::index`]), from its `api_key_env`.
    api_keys: [Option<String>; ProviderKind::COUNT],
    pub esl_password: Option<String>,
    pub webhook_secret: Option<String>,
    pub twilio_auth_token: Option<String>,
}

impl EnvSecrets {
    /// Keeps `value` if `name` is one of the conventional variables; false otherwise.
    pub fn offer(&mut self, name: &str, value: &str) -> bool {
        let slot = if let Some(kind) = ProviderKind::ALL
            .into_iter()
            .find(|k| k.api_key_env() == Some(name))
        {
            &mut self.api_keys[kind.index()]
        } else if name == ESL_PASSWORD_VAR {
            &mut self.esl_password
        } else if name == WEBHOOK_SECRET_VAR {
            &mut self.webhook_secret
        } else if name == TWILIO_AUTH_TOKEN_VAR {
            &mut self.twilio_auth_token
        } else {
            return false;
        };
        *slot = Some(value.to_string());
        true
    }

    /// The API key `kind`'s variable held, if set.
    pub fn api_key(&self, kind: ProviderKind) -> &Option<String> {
        &self.api_keys[kind.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_conventional_variable_lands_in_its_slot() {
        let mut s = EnvSecrets::default();
        assert!(s.offer("GEMINI_API_KEY", "g"));
        assert!(s.offer("FREESWITCH_ESL_PASSWORD", "p"));
        assert!(s.offer("VOICEBRIDGE_WEBHOOK_SECRET", "w"));
        assert!(!s.offer("HOME", "/root"));
        assert_eq!(s.api_key(ProviderKind::Gemini).as_deref(), Some("g"));
        assert_eq!(s.api_key(ProviderKind::OpenAi), &None);
        assert_eq!(s.esl_password.as_deref(), Some("p"));
        assert_eq!(s.webhook_secret.as_deref(), Some("w"));
    }
}
