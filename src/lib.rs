//! voicebridge: bridges FreeSWITCH `mod_audio_stream` calls to realtime speech-to-speech AI.
//!
//! See `README.md` for the architecture; each module opens with why it exists.

pub mod admin;
pub mod admission;
pub mod audio;
pub mod budget;
pub mod call;
pub mod call_metrics;
pub mod call_record;
pub mod call_task;
pub mod check;
pub mod config;
pub mod daemon;
pub mod lookup;
pub mod providers;
pub mod records;
pub mod redact;
pub mod registry;
pub mod server;
pub mod telemetry;
pub mod telephony;
pub mod text_cap;
pub mod tools;
pub mod webhook;
pub mod ws_read;
