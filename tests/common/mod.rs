//! Shared test support. Each integration-test binary compiles this module and
//! uses only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod call;
pub mod daemon;
pub mod fake_asterisk_ws;
pub mod fake_audiosocket;
pub mod fake_esl;
pub mod fake_freeswitch;
pub mod fake_twilio;
pub mod http;
pub mod mock_elevenlabs;
pub mod mock_gemini;
pub mod mock_media_streams;
pub mod mock_openai;
pub mod webhook_server;
