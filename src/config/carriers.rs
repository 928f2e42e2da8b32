//! `[twilio]`: the carrier Media Streams settings (the upgrade's signature check).

use super::env_secrets::EnvSecrets;
use super::parse::{non_empty, secret};
use super::raw::RawTwilio;
use super::{ConfigError, TwilioConfig};

pub(super) fn twilio(raw: RawTwilio, secrets: &EnvSecrets) -> Result<TwilioConfig, ConfigError> {
    let public_url = non_empty(raw.public_url)
        .map(|u| u.trim_end_matches('/').to_owned())
        .map(|u| {
            let ok = ["wss://", "ws://", "https://", "http://"]
                .iter()
                .any(|s| u.starts_with(s) && u.len() > s.len());
            if ok && !u.contains('?') {
                Ok(u)
            } else {
                Err(ConfigError::invalid(
                    "twilio.public_url",
                    format!(
                        "{u:?} is not the scheme and host Twilio connects to (e.g. \"wss://vb.example.com\")"
                    ),
                ))
            }
        })
        .transpose()?;
    Ok(TwilioConfig {
        auth_token: secret(raw.auth_token, &secrets.twilio_auth_token),
        public_url,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml_str(toml, env).map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default() {
        let c = load("", &[]).unwrap();
        assert!(c.twilio.auth_token.is_empty());
        assert_eq!(c.twilio.public_url, None);
    }

    #[test]
    fn the_token_comes_from_the_file_or_the_environment() {
        let c = load(
            "[twilio]\nauth_token = \"from-file\"",
            &[("TWILIO_AUTH_TOKEN", "env")],
        )
        .unwrap();
        assert_eq!(c.twilio.auth_token.expose(), "from-file");
        let c = load("", &[("TWILIO_AUTH_TOKEN", "from-env")]).unwrap();
        assert_eq!(c.twilio.auth_token.expose(), "from-env");
        assert!(!format!("{c:?}").contains("from-env"), "never printed");
    }

    #[test]
    fn public_url_is_scheme_and_host() {
        let c = load("[twilio]\npublic_url = \"wss://vb.example.com/\"", &[]).unwrap();
        assert_eq!(c.twilio.public_url.as_deref(), Some("wss://vb.example.com"));
        let e = load("[twilio]\npublic_url = \"vb.example.com\"", &[]).unwrap_err();
        assert!(e.contains("twilio.public_url"), "{e}");
    }
}
