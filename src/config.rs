//! Typed configuration: a TOML file, overridden by the environment, validated once at
//! startup.
//!
//! ```text
//!  config file (TOML) ──┐
//!                       ├─► config crate merge ─► RawConfig ─► compile() ─► Config
//!  VOICEBRIDGE__A__B ───┘    (env wins)           (serde only,  (parse, validate,
//!                                                  all Option)   defaults, routes,
//!  OPENAI_API_KEY, GEMINI_API_KEY, ELEVENLABS_API_KEY,           secrets)
//!  FREESWITCH_ESL_PASSWORD ──────────────────────────────────────────┘
//! ```
//!
//! - The environment is an argument (`impl IntoIterator<Item = (String, String)>`), never
//!   read from the process here: `main` passes `std::env::vars()`, tests pass a map.
//! - `RawConfig` (`raw.rs`) is serde only; `compile()` (`compile.rs`) is the one place
//!   that knows the rules, so every problem is found at startup, never at first use,
//!   and reported as one message that names the key ([`ConfigError`]).
//! - Routes are resolved here too: each [`Route`] is `[call]` + the audio format of
//!   `[freeswitch]` with its `[[routes]]` overrides applied, so the server and the
//!   session never merge layers themselves.
//! - Modules, each depending only on those after it: `load` (env split, merge) →
//!   `compile` (the sections) → `business` (lookup, tools, records, prices) → `parse`
//!   (shared value parsers); `env_secrets` and `kinds` (the table of provider kinds:
//!   names, key variables, credentials, default prices) are data any of them reads.
//!
//! The keys, their defaults and their meaning are the user contract in `CONFIG.md`
//! (and `config/default.toml`, which ships every key with its default).

pub mod audiosocket;
mod business;
mod carriers;
mod compile;
pub mod env_file;
mod env_secrets;
mod error;
pub mod kinds;
mod load;
mod parse;
mod raw;
mod secret;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::audio::{Channels, Codec};
pub use audiosocket::AudioSocketListener;
pub use error::ConfigError;
pub use kinds::{Interruption, KindInfo, Price, ProviderKind};
pub use secret::Secret;

/// The name of the route used when the URL path does not select another one
/// (`ws://HOST:PORT/call/<uuid>`); it always exists.
pub const DEFAULT_ROUTE: &str = "call";

/// The validated configuration. Built only by [`Config::load`] / [`Config::from_toml_str`],
/// so holding one means every rule below was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub freeswitch: FreeswitchConfig,
    pub call: CallConfig,
    pub providers: ProvidersConfig,
    /// The shared secret every outgoing webhook is signed with.
    pub webhooks: WebhooksConfig,
    /// Where the per-call JSON records go.
    pub records: RecordsConfig,
    /// Per-provider prices, for the records' estimated cost.
    pub prices: PricesConfig,
    pub budgets: BudgetsConfig,
    /// `[[audiosocket]]`: Asterisk AudioSocket listeners (none by default).
    pub audiosocket: Vec<AudioSocketListener>,
    /// Carrier Media Streams (`/twilio/...`, `/telnyx/...`): the Twilio signature check.
    pub twilio: TwilioConfig,
    /// The `call` route, kept apart so it exists by construction.
    default_route: Arc<Route>,
    /// The other `[[routes]]`, in file order.
    extra_routes: Vec<Arc<Route>>,
    /// Things noticed while loading that are worth a startup warning (see `warnings()`).
    load_notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where `mod_audio_stream` connects.
    pub listen: SocketAddr,
    /// Accepted bearer tokens; when non-empty every connection must present one.
    pub auth_tokens: Vec<Secret>,
    /// Concurrent calls; above it the upgrade gets HTTP 503.
    pub max_calls: usize,
    /// Time allowed for the WebSocket upgrade (the module gives up after 1 s).
    pub handshake_timeout: Duration,
    /// On SIGTERM, how long live calls keep being served.
    pub drain_timeout: Duration,
    /// Allows a non-loopback `listen` with no tokens (warned at every start).
    pub allow_unauthenticated: bool,
    /// Failed upgrades per second from one source (IPv4 address or IPv6 /64) before
    /// its further failing upgrades get 429 (burst: twice that); 0 disables.
    /// Authenticated upgrades are never refused by it.
    pub per_ip_rate_limit: u32,
    /// Connections from one source that have not finished the handshake; above it a
    /// new one gets HTTP 429 at once.
    pub max_handshakes_per_ip: usize,
    /// The same in total; above it a new connection gets HTTP 503 at once.
    pub max_handshakes: usize,
}

/// `[twilio]`: how `/twilio/...` upgrades are authenticated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TwilioConfig {
    /// The account's auth token (`TWILIO_AUTH_TOKEN`); when set, every `/twilio/...`
    /// upgrade must carry a valid `X-Twilio-Signature` (or one of `server.auth_tokens`).
    pub auth_token: Secret,
    /// Scheme and authority Twilio connects to (`wss://vb.example.com`), when a proxy
    /// in front makes the URL we see differ; else `wss://` + the Host header.
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// `/healthz`, `/readyz`, `/metrics`.
    pub listen: SocketAddr,
    /// Open admin connections; a new one above it is answered 503 and closed.
    pub max_connections: usize,
    /// A request's headers must arrive within this of the connection opening or of
    /// the previous response (so it is also the keep-alive idle timeout).
    pub header_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Pretty on a TTY, JSON otherwise.
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive (`RUST_LOG` syntax); `RUST_LOG` overrides it.
    pub level: String,
    /// Log caller/assistant transcripts (privacy switch).
    pub transcripts: bool,
}

/// How audio is played back to FreeSWITCH (see the `mod_audio_stream` protocol doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaybackMode {
    /// Raw binary frames on the WebSocket.
    Binary,
    /// `streamAudio` JSON messages.
    StreamAudio,
    /// Files played through ESL (`uuid_broadcast`); needs `[freeswitch.esl]`.
    EslFiles,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeswitchConfig {
    /// Rate given to `uuid_audio_stream ... start`; default for routes and URLs.
    pub sample_rate: u32,
    pub channels: Channels,
    pub codec: Codec,
    pub playback: PlaybackMode,
    /// How far ahead of real time FreeSWITCH may buffer (the floor of barge-in latency).
    pub playback_lead: Duration,
    /// `esl_files` playback: audio per file. FreeSWITCH plays the files one after
    /// another over ESL, and each file start costs a little, so small chunks leave gaps.
    pub esl_chunk: Duration,
    /// Assistant audio queued for playback beyond this is dropped (a provider sending
    /// far faster than real time must not grow memory without bound).
    pub playback_max_queue: Duration,
    /// Event Socket; `None` when `[freeswitch.esl]` is absent.
    pub esl: Option<EslConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EslConfig {
    pub host: String,
    pub port: u16,
    /// From the file, else env `FREESWITCH_ESL_PASSWORD`.
    pub password: Secret,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallConfig {
    pub provider: ProviderKind,
    pub instructions: String,
    /// What the assistant says first; empty: wait for the caller.
    pub greeting: String,
    pub max_duration: Duration,
    /// No audio from FreeSWITCH for this long ends the call; `Duration::ZERO` disables it.
    pub idle_timeout: Duration,
    /// Voice for this call; empty: the provider section's `voice`.
    pub voice: String,
    /// Conversation language (BCP-47, e.g. `it-IT`); empty: the provider decides.
    pub language: String,
    /// The caller finished a turn and the provider has not answered for this long: the
    /// watchdog logs it. `Duration::ZERO` disables it.
    pub response_timeout: Duration,
    /// Said by the assistant when `max_duration` ends the call (providers that can be
    /// told what to say: OpenAI, Gemini); empty: hang up at once.
    pub goodbye: String,
    /// Caller lookup before the provider is set up; `None`: no lookup.
    pub context: Option<ContextLookup>,
    /// Functions the model may call, each answered by a webhook.
    pub tools: Arc<[ToolSpec]>,
    /// Built-in `end_call`: the assistant may hang up once it has said goodbye.
    pub end_call: bool,
    /// Built-in `transfer_call` to this `uuid_transfer` destination (`EXT [DIALPLAN
    /// [CONTEXT]]`); empty: not offered. Needs `[freeswitch.esl]`.
    pub transfer_to: String,
    /// Calls accepted on the route per UTC day; 0: no limit.
    pub daily_max_calls: u64,
    /// Call minutes on the route per UTC day; 0: no limit.
    pub daily_max_minutes: u64,
    /// What the caller's key presses do.
    pub dtmf: DtmfMode,
    /// Keys pressed within this of each other are told to the model as one entry.
    pub dtmf_group: Duration,
    /// Barge-in guard: the provider's "caller started speaking" flushes playback only
    /// after this much continuous caller speech; zero: at once.
    pub barge_in_min: Duration,
    /// Caller audio per message to the provider: one 20 ms frame (the default, least
    /// delay) or several, which saves a socket write per frame (CPU) and delays what the
    /// provider hears by up to this less 20 ms.
    pub uplink_chunk: Duration,
    /// The greeting may be cut by the caller.
    pub greeting_interruptible: bool,
    /// The last words (the goodbye, the reply before `end_call`) may be cut.
    pub goodbye_interruptible: bool,
    /// Providers tried in order when the one serving the call fails before the caller
    /// has heard it (connect, setup, early close): never the primary, no repeats.
    pub fallback: Vec<ProviderKind>,
    /// OpenAI `turn_detection.idle_timeout_ms`: the model speaks again (re-prompts) when
    /// the caller has said nothing this long after its reply; zero: off.
    pub silence_reprompt: Duration,
}

impl CallConfig {
    /// voicebridge, not the provider, decides when the caller interrupts (the guard or
    /// an uninterruptible greeting/goodbye is set, and the provider lets it).
    pub fn manages_interruption(&self) -> bool {
        let wanted = !self.barge_in_min.is_zero()
            || !self.greeting_interruptible
            || !self.goodbye_interruptible;
        wanted && self.provider.info().interruption != Interruption::ProviderOnly
    }
}

/// What the caller's key presses (DTMF) do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfMode {
    /// Logged, counted and recorded only.
    Ignore,
    /// Also told to the model, in its own protocol, grouped (`dtmf_group_ms`).
    ToModel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
}

/// `[call.context]`: who is calling, asked of the business's own system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextLookup {
    pub url: String,
    pub method: HttpMethod,
    /// The call goes ahead with the defaults after this long.
    pub timeout: Duration,
}

/// One tool from `[[call.tools]]`: declared to the model, executed by POSTing the
/// arguments to `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema (an object schema) of the arguments.
    pub parameters: serde_json::Value,
    pub url: String,
    /// The model gets an error result after this long.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhooksConfig {
    /// HMAC-SHA256 key for the `X-Voicebridge-Signature` header; empty: unsigned.
    /// From the file, else env `VOICEBRIDGE_WEBHOOK_SECRET`.
    pub secret: Secret,
    /// Longest answer body read from any webhook (lookup, tools, records); a longer
    /// one is an error, never read whole into memory.
    pub max_response_bytes: usize,
    /// Webhook tool calls running at once per call; more get an error result at once.
    pub max_tool_calls_in_flight: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            secret: Secret::default(),
            max_response_bytes: 256 * 1024,
            max_tool_calls_in_flight: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsConfig {
    /// JSON Lines file, one record per call; `None`: no file.
    pub file: Option<PathBuf>,
    /// The file is rotated (`.1`, `.2`, ...) when it reaches this size.
    pub file_max_bytes: u64,
    /// Rotated files kept.
    pub file_keep: u32,
    /// Every record is POSTed here; `None`: no webhook.
    pub webhook_url: Option<String>,
    pub webhook_timeout: Duration,
    /// Longest answer read from the records webhook: `[webhooks] max_response_kb`.
    pub webhook_max_response: usize,
    /// Records not yet delivered to the webhook wait here (survives restarts).
    pub spool_dir: Option<PathBuf>,
    /// Above this the oldest spooled records are dropped (and counted).
    pub spool_max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricesConfig {
    /// Shown next to the cost in records (informational).
    pub currency: String,
    /// By [`ProviderKind::index`]; read with [`PricesConfig::of`].
    per_kind: [Price; ProviderKind::COUNT],
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetsConfig {
    /// Today's per-route usage is saved here so a restart does not reset the budgets.
    pub state_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProvidersConfig {
    pub echo: EchoConfig,
    pub openai: OpenAiConfig,
    pub gemini: GeminiConfig,
    pub elevenlabs: ElevenLabsConfig,
    pub media_streams: MediaStreamsConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoMode {
    /// Repeat each caller utterance after a pause (barge-in works).
    Utterance,
    /// Send every sample back, `delay` later.
    Stream,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoConfig {
    pub mode: EchoMode,
    /// Stream mode only.
    pub delay: Duration,
    /// The rate the echo provider works at internally, as an AI provider would, so the
    /// resampling path is exercised; 0 = the call's own rate.
    pub sample_rate: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAiAudioFormat {
    /// `audio/pcmu`: G.711 μ-law passed through.
    Pcmu,
    /// `audio/pcma`: G.711 A-law passed through.
    Pcma,
    /// `audio/pcm`, 24 kHz PCM16.
    Pcm24,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiConfig {
    pub url: String,
    pub model: String,
    pub api_key: Secret,
    pub voice: String,
    pub audio_format: OpenAiAudioFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeminiConfig {
    pub url: String,
    pub model: String,
    pub api_key: Secret,
    pub voice: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElevenLabsConfig {
    pub url: String,
    pub agent_id: String,
    /// When set, a signed URL is fetched from `signed_url_endpoint` per call.
    pub api_key: Secret,
    pub signed_url_endpoint: String,
}

/// `[providers.media_streams]`: a Twilio-protocol backend voicebridge dials per call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaStreamsConfig {
    /// `ws://` or `wss://`; empty when not configured (a route using it is refused).
    pub url: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Secret,
    /// Extra upgrade headers (names and values checked at startup).
    pub headers: Vec<(String, String)>,
}

/// A fully resolved route: `[call]` + `[freeswitch]` defaults with the route's
/// overrides applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub call: CallConfig,
    pub sample_rate: u32,
    pub channels: Channels,
    pub codec: Codec,
    pub playback: PlaybackMode,
    pub playback_lead: Duration,
    /// Concurrent calls on this route (on top of `server.max_calls`); `None`: no own limit.
    pub max_calls: Option<usize>,
}

impl Config {
    /// Loads `path` (TOML) with overrides from `env` (`std::env::vars()` in `main`, a
    /// map in tests).
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        load::load(&text, &path.display().to_string(), env)
    }

    /// Like [`Config::load`], from TOML text (an empty string gives the defaults).
    pub fn from_toml_str(
        toml: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        load::load(toml, "config", env)
    }

    /// The route called `name`; `"call"` ([`DEFAULT_ROUTE`]) always exists.
    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes().find(|r| r.name == name)
    }

    /// The `call` route, used when the URL path names none.
    pub fn default_route(&self) -> &Arc<Route> {
        &self.default_route
    }

    /// All routes, `call` first, then the other `[[routes]]` in file order.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        std::iter::once(&self.default_route).chain(&self.extra_routes)
    }

    /// The distinct providers used by any route, in route order.
    pub fn providers_in_use(&self) -> Vec<ProviderKind> {
        let mut out = Vec::new();
        for route in self.routes() {
            for kind in std::iter::once(&route.call.provider).chain(&route.call.fallback) {
                if !out.contains(kind) {
                    out.push(*kind);
                }
            }
        }
        out
    }

    /// Things that are allowed but deserve a line in the startup log.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = self.load_notes.clone();
        let s = &self.server;
        if !s.listen.ip().is_loopback() && s.auth_tokens.is_empty() && s.allow_unauthenticated {
            out.push(format!(
                "server.allow_unauthenticated = true: anyone who can reach {} can open calls \
                 (and spend provider credit); set server.auth_tokens unless a firewall \
                 protects the port",
                s.listen
            ));
        }
        if s.allow_unauthenticated && !s.auth_tokens.is_empty() {
            out.push(
                "server.allow_unauthenticated has no effect: auth_tokens is set, so every \
                 connection must present a token"
                    .to_string(),
            );
        }
        for r in self.routes() {
            let c = &r.call;
            let wanted =
                !c.barge_in_min.is_zero() || !c.greeting_interruptible || !c.goodbye_interruptible;
            if wanted && c.provider.info().interruption == Interruption::ProviderOnly {
                out.push(format!(
                    "route {:?}: barge_in_min_ms / greeting_interruptible / goodbye_interruptible \
                     have no effect with {}: it cuts its reply itself when the caller speaks",
                    r.name,
                    c.provider.name()
                ));
            }
        }
        if s.auth_tokens.iter().any(|t| t.expose().len() < 16) {
            out.push(
                "server.auth_tokens: a token shorter than 16 characters is easy to guess"
                    .to_string(),
            );
        }
        let uses_webhooks = self.records.webhook_url.is_some()
            || self
                .routes()
                .any(|r| r.call.context.is_some() || !r.call.tools.is_empty());
        if uses_webhooks && self.webhooks.secret.is_empty() {
            out.push(
                "webhooks are configured (caller lookup, tools or records) but [webhooks] \
                 secret is empty: requests go unsigned and receivers cannot tell them from \
                 forgeries; set VOICEBRIDGE_WEBHOOK_SECRET"
                    .to_string(),
            );
        }
        if self.routes().any(|r| r.call.end_call) && self.freeswitch.esl.is_none() {
            out.push(
                "end_call without [freeswitch.esl]: after the goodbye voicebridge can only \
                 close the stream, and the dialplan must hang up (e.g. `hangup` after the \
                 app that started the stream)"
                    .to_string(),
            );
        }
        if let Some(esl) = &self.freeswitch.esl {
            if esl.password.is_empty() {
                out.push(
                    "freeswitch.esl.password is empty: FreeSWITCH will refuse the Event \
                     Socket login; set FREESWITCH_ESL_PASSWORD"
                        .to_string(),
                );
            }
        }
        out
    }
}

/// Parse/print for the string-valued enums: one table per enum, so the names accepted
/// and the names listed in error messages cannot drift apart.
macro_rules! named_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every accepted name, in documentation order.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            pub const fn name(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }

            /// Case-insensitive inverse of `name()`.
            pub fn parse(s: &str) -> Option<$ty> {
                let s = s.to_ascii_lowercase();
                match s.as_str() { $($name => Some($ty::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named_enum!(LogFormat { Auto => "auto", Json => "json", Pretty => "pretty" });
named_enum!(PlaybackMode {
    Binary => "binary",
    StreamAudio => "stream_audio",
    EslFiles => "esl_files",
});
named_enum!(EchoMode { Utterance => "utterance", Stream => "stream" });
named_enum!(OpenAiAudioFormat { Pcmu => "pcmu", Pcma => "pcma", Pcm24 => "pcm24" });
named_enum!(HttpMethod { Get => "get", Post => "post" });
named_enum!(DtmfMode { Ignore => "ignore", ToModel => "to_model" });

// The defaults of CONFIG.md, in one place. compile() starts from these and applies
// what the file and the environment set.

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
            auth_tokens: Vec::new(),
            max_calls: 500,
            handshake_timeout: Duration::from_millis(800),
            drain_timeout: Duration::from_secs(30),
            allow_unauthenticated: false,
            per_ip_rate_limit: 5,
            max_handshakes_per_ip: 64,
            max_handshakes: 1024,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9091)),
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Auto,
            level: "info".to_string(),
            transcripts: true,
        }
    }
}

impl Default for FreeswitchConfig {
    fn default() -> Self {
        FreeswitchConfig {
            sample_rate: 8000,
            channels: Channels::Mono,
            codec: Codec::L16,
            playback: PlaybackMode::Binary,
            playback_lead: Duration::from_millis(60),
            esl_chunk: Duration::from_millis(500),
            playback_max_queue: Duration::from_secs(60),
            esl: None,
        }
    }
}

impl Default for EslConfig {
    fn default() -> Self {
        EslConfig {
            host: "127.0.0.1".to_string(),
            port: 8021,
            password: Secret::default(),
        }
    }
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            provider: ProviderKind::Echo,
            instructions: "You are a helpful phone assistant. Keep answers short.".to_string(),
            greeting: String::new(),
            max_duration: Duration::from_secs(1800),
            idle_timeout: Duration::from_secs(60),
            voice: String::new(),
            language: String::new(),
            response_timeout: Duration::from_secs(15),
            goodbye: String::new(),
            context: None,
            tools: Arc::from(Vec::new()),
            end_call: false,
            transfer_to: String::new(),
            daily_max_calls: 0,
            daily_max_minutes: 0,
            dtmf: DtmfMode::ToModel,
            dtmf_group: Duration::from_millis(1000),
            barge_in_min: Duration::ZERO,
            uplink_chunk: Duration::from_millis(20),
            greeting_interruptible: true,
            goodbye_interruptible: true,
            fallback: Vec::new(),
            silence_reprompt: Duration::ZERO,
        }
    }
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            mode: EchoMode::Utterance,
            delay: Duration::from_millis(200),
            sample_rate: 24000,
        }
    }
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            url: "wss://api.openai.com/v1/realtime".to_string(),
            model: "gpt-realtime-2.1".to_string(),
            api_key: Secret::default(),
            voice: "marin".to_string(),
            audio_format: OpenAiAudioFormat::Pcmu,
        }
    }
}

impl Default for GeminiConfig {
    fn default() -> Self {
        GeminiConfig {
            url: "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent".to_string(),
            model: "models/gemini-3.8-live".to_string(),
            api_key: Secret::default(),
            voice: "Kore".to_string(),
        }
    }
}

impl Default for ElevenLabsConfig {
    fn default() -> Self {
        ElevenLabsConfig {
            url: "wss://api.elevenlabs.io/v1/convai/conversation".to_string(),
            agent_id: String::new(),
            api_key: Secret::default(),
            signed_url_endpoint: "https://api.elevenlabs.io/v1/convai/conversation/get-signed-url"
                .to_string(),
        }
    }
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            file: None,
            file_max_bytes: 100 * 1024 * 1024,
            file_keep: 5,
            webhook_url: None,
            webhook_timeout: Duration::from_secs(5),
            webhook_max_response: WebhooksConfig::default().max_response_bytes,
            spool_dir: None,
            spool_max_bytes: 100 * 1024 * 1024,
        }
    }
}

impl Default for PricesConfig {
    fn default() -> Self {
        PricesConfig {
            currency: "USD".to_string(),
            per_kind: ProviderKind::ALL.map(|k| k.info().default_price),
        }
    }
}

impl PricesConfig {
    pub fn of(&self, kind: ProviderKind) -> Price {
        self.per_kind[kind.index()]
    }

    /// Sets the price of `kind` (used by `compile()`).
    pub(crate) fn set(&mut self, kind: ProviderKind, price: Price) {
        self.per_kind[kind.index()] = price;
    }
}

impl ProvidersConfig {
    /// The value a route using `kind` cannot connect without (its row's `credential`
    /// field); empty when missing or when the kind needs none.
    pub fn credential(&self, kind: ProviderKind) -> &str {
        match kind {
            ProviderKind::Echo => "",
            ProviderKind::OpenAi => self.openai.api_key.expose(),
            ProviderKind::Gemini => self.gemini.api_key.expose(),
            ProviderKind::ElevenLabs => &self.elevenlabs.agent_id,
            ProviderKind::MediaStreams => &self.media_streams.url,
        }
    }
}
