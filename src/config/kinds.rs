//! The table of provider kinds: every fact about a kind of AI provider that is not
//! its socket code (its name, the variable holding its key, whether it can be told
//! what to say, its config section, what it needs to connect, its default prices).
//!
//! It is pure data and imports nothing, so both the config (which parses and checks
//! routes) and `providers` (which runs them) read it without depending on each other.
//! Adding a provider adds one variant and one row here; the compiler then points at
//! the few typed places left (its config section, its socket task).

use std::time::Duration;

/// Which realtime provider answers a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// Built in, no API key: plays the caller back.
    Echo,
    OpenAi,
    Gemini,
    ElevenLabs,
    /// Any backend speaking the Twilio Media Streams protocol (a Pipecat bot, ...):
    /// voicebridge plays Twilio's part toward it.
    MediaStreams,
}

/// What must be configured before a provider can connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential {
    /// The key inside the provider's section (`api_key`, `agent_id`).
    pub field: &'static str,
    /// Named in the startup error, e.g. "an API key".
    pub what: &'static str,
}

/// Prices in millionths of the currency unit, so the config stays `Eq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    pub input_per_million_tokens: u64,
    pub output_per_million_tokens: u64,
    pub per_minute: u64,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: ProviderKind,
    /// In the config (`[call] provider = "..."`), logs, metrics and records.
    pub name: &'static str,
    /// The conventional environment variable holding its API key.
    pub api_key_env: Option<&'static str>,
    /// Whether it can be told to say a given text (the goodbye at the duration limit).
    pub can_say: bool,
    /// Its config section (`[providers.<name>]`).
    pub section: &'static str,
    /// What a route using it cannot do without.
    pub credential: Option<Credential>,
    /// `[prices.<name>]` when the file sets none (records' estimated cost).
    pub default_price: Price,
    /// Whether voicebridge can take barge-in decisions over from the provider (the
    /// barge-in guard, uninterruptible greetings and goodbyes).
    pub interruption: Interruption,
}

/// How a provider's barge-in can be managed by voicebridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// The provider can be told not to cut its reply by itself and still reports that
    /// the caller started speaking (OpenAI `interrupt_response: false`; echo): a
    /// barge-in is that report, confirmed by voicebridge.
    Reported,
    /// The provider can be told not to cut its reply, but then reports nothing (Gemini
    /// `activityHandling: NO_INTERRUPTION`): voicebridge's own detection decides.
    LocalOnly,
    /// The provider always cuts its reply itself (ElevenLabs agents): the settings have
    /// no effect, and the config says so at startup.
    ProviderOnly,
}

const NO_PRICE: Price = Price {
    input_per_million_tokens: 0,
    output_per_million_tokens: 0,
    per_minute: 0,
};

const API_KEY: Credential = Credential {
    field: "api_key",
    what: "an API key",
};

/// In [`ProviderKind`] declaration order (a test checks it), so a kind is its index.
const KINDS: [KindInfo; 5] = [
    KindInfo {
        kind: ProviderKind::Echo,
        name: "echo",
        api_key_env: None,
        can_say: false,
        section: "providers.echo",
        credential: None,
        default_price: NO_PRICE,
        interruption: Interruption::Reported,
    },
    KindInfo {
        kind: ProviderKind::OpenAi,
        name: "openai",
        api_key_env: Some("OPENAI_API_KEY"),
        can_say: true,
        section: "providers.openai",
        credential: Some(API_KEY),
        default_price: NO_PRICE,
        interruption: Interruption::Reported,
    },
    KindInfo {
        kind: ProviderKind::Gemini,
        name: "gemini",
        api_key_env: Some("GEMINI_API_KEY"),
        can_say: true,
        section: "providers.gemini",
        credential: Some(API_KEY),
        default_price: NO_PRICE,
        interruption: Interruption::LocalOnly,
    },
    KindInfo {
        kind: ProviderKind::ElevenLabs,
        name: "elevenlabs",
        api_key_env: Some("ELEVENLABS_API_KEY"),
        // The agent's script is configured at ElevenLabs; it cannot be handed a text.
        can_say: false,
        section: "providers.elevenlabs",
        credential: Some(Credential {
            field: "agent_id",
            what: "an agent id",
        }),
        default_price: NO_PRICE,
        interruption: Interruption::ProviderOnly,
    },
    KindInfo {
        kind: ProviderKind::MediaStreams,
        name: "media_streams",
        // No key: the backend is the operator's own (an optional bearer token).
        api_key_env: None,
        // The backend's bot decides what it says.
        can_say: false,
        section: "providers.media_streams",
        credential: Some(Credential {
            field: "url",
            what: "a backend URL",
        }),
        default_price: NO_PRICE,
        // It cuts its reply with `clear` when it decides to.
        interruption: Interruption::ProviderOnly,
    },
];

impl ProviderKind {
    pub const COUNT: usize = KINDS.len();

    pub const ALL: [ProviderKind; Self::COUNT] = [
        ProviderKind::Echo,
        ProviderKind::OpenAi,
        ProviderKind::Gemini,
        ProviderKind::ElevenLabs,
        ProviderKind::MediaStreams,
    ];

    /// This kind's row of the table.
    pub const fn info(self) -> &'static KindInfo {
        &KINDS[self as usize]
    }

    /// Its position in [`ProviderKind::ALL`], for per-kind arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The name used in the config (`[call] provider = "..."`) and in logs/metrics.
    pub const fn name(self) -> &'static str {
        self.info().name
    }

    /// Case-insensitive inverse of [`ProviderKind::name`].
    pub fn parse(s: &str) -> Option<ProviderKind> {
        let s = s.to_ascii_lowercase();
        KINDS.iter().find(|k| k.name == s).map(|k| k.kind)
    }

    /// The conventional environment variable holding this provider's API key.
    pub const fn api_key_env(self) -> Option<&'static str> {
        self.info().api_key_env
    }

    /// Every name, in table order (for "not one of ..." messages).
    pub fn names() -> [&'static str; Self::COUNT] {
        KINDS.map(|k| k.name)
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Price {
    /// Estimated cost of a call, in currency units.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64, duration: Duration) -> f64 {
        let micro = |v: u64| v as f64 / 1e6;
        micro(self.input_per_million_tokens) * input_tokens as f64 / 1e6
            + micro(self.output_per_million_tokens) * output_tokens as f64 / 1e6
            + micro(self.per_minute) * duration.as_secs_f64() / 60.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_in_declaration_order_and_agree_with_all() {
        for (i, kind) in ProviderKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i);
            assert_eq!(kind.info().kind, kind);
        }
    }

    #[test]
    fn names_round_trip_and_sections_follow_them() {
        for kind in ProviderKind::ALL {
            assert_eq!(ProviderKind::parse(kind.name()), Some(kind));
            assert_eq!(
                ProviderKind::parse(&kind.name().to_ascii_uppercase()),
                Some(kind)
            );
            assert_eq!(kind.info().section, format!("providers.{}", kind.name()));
        }
        assert_eq!(ProviderKind::parse("opnai"), None);
    }

    #[test]
    fn every_networked_kind_has_a_key_variable_and_a_credential() {
        // A Twilio-protocol backend is the operator's own: a URL, no key variable.
        let keyless = [ProviderKind::MediaStreams];
        for kind in ProviderKind::ALL
            .into_iter()
            .filter(|k| !keyless.contains(k))
        {
            let info = kind.info();
            assert_eq!(
                info.api_key_env.is_some(),
                info.credential.is_some(),
                "{kind}"
            );
        }
        assert_eq!(ProviderKind::Gemini.api_key_env(), Some("GEMINI_API_KEY"));
        assert!(ProviderKind::OpenAi.info().can_say);
        assert!(!ProviderKind::ElevenLabs.info().can_say);
        let ms = ProviderKind::MediaStreams.info();
        assert_eq!(
            (ms.api_key_env, ms.credential.map(|c| c.field)),
            (None, Some("url"))
        );
    }
}
