//! The built-in `echo` provider: no API key, no network. It plays the caller back so a
//! FreeSWITCH admin can check the dialplan and the whole audio path (transcoding, pacing,
//! barge-in) before paying for AI.
//!
//! `utterance` mode behaves like a conversational AI with server-side VAD: it waits for
//! the caller to finish an utterance (simple energy endpointing), then sends it back in
//! fast bursts, and raises `SpeechStarted` when the caller talks while it is playing, so
//! barge-in is exercised end to end. `stream` mode sends every frame straight back,
//! `delay` later, for checking latency and continuity.
//!
//! It works in L16 at `sample_rate` (24 kHz by default, like OpenAI's PCM): the call
//! transcodes exactly as it would for a real provider.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{ProviderChannels, ProviderCommand, ProviderEvent};
use crate::audio::signal::rms_dbfs;
use crate::audio::{pcm, AudioFormat, ItemId, FRAME_MS};
use crate::config::{EchoConfig, EchoMode};

/// A frame louder than this starts an utterance...
const SPEECH_START_DBFS: f64 = -40.0;
/// ...and one quieter than this counts as silence inside it (hysteresis).
const SPEECH_CONTINUE_DBFS: f64 = -45.0;
/// Consecutive loud frames needed to call it speech (rejects clicks).
const START_FRAMES: usize = 2;
/// Silence that ends an utterance.
const END_SILENCE: Duration = Duration::from_millis(600);
/// Audio kept from before the start was detected, so the first syllable is not clipped.
const PREROLL_FRAMES: usize = 5;
/// Shorter utterances are treated as noise.
const MIN_UTTERANCE: Duration = Duration::from_millis(200);
/// Longer ones are answered anyway, so memory stays bounded.
const MAX_UTTERANCE: Duration = Duration::from_secs(30);
/// Size of each audio event: providers send bursts of roughly this size.
const BURST: Duration = Duration::from_millis(100);

/// Runs the echo provider until the call closes it.
pub async fn run(config: EchoConfig, call_format: AudioFormat, mut ends: ProviderChannels) {
    let rate = if config.sample_rate == 0 {
        call_format.rate
    } else {
        config.sample_rate
    };
    let format = AudioFormat::l16(rate);
    if ends
        .events
        .send(ProviderEvent::Ready {
            input: format,
            output: format,
        })
        .await
        .is_err()
    {
        return;
    }
    let mut state = Echo::new(config, format);
    while let Some(command) = ends.commands.recv().await {
        match command {
            ProviderCommand::Audio(frame) => {
                for event in state.on_frame(&frame, Instant::now()) {
                    if ends.events.send(event).await.is_err() {
                        return;
                    }
                }
            }
            ProviderCommand::Truncate { item, played_ms } => {
                tracing::debug!(%item, played_ms, "echo: truncate");
            }
            ProviderCommand::Cancel
            | ProviderCommand::Context(_)
            | ProviderCommand::Say(_)
            | ProviderCommand::ToolResult(_)
            | ProviderCommand::Dtmf(_)
            | ProviderCommand::MarkPlayed(_) => {}
            ProviderCommand::Close => break,
        }
    }
}

/// Pure echo state: frames in, events out (time is a parameter for testing).
struct Echo {
    mode: EchoMode,
    delay: Duration,
    format: AudioFormat,
    speaking: bool,
    loud_run: usize,
    silent_run: usize,
    preroll: VecDeque<Vec<u8>>,
    utterance: Vec<u8>,
    playing_until: Option<Instant>,
    responses: u64,
    stream_item: ItemId,
    stream_started: bool,
    samples: Vec<i16>,
}

impl Echo {
    fn new(config: EchoConfig, format: AudioFormat) -> Self {
        Echo {
            mode: config.mode,
            delay: config.delay,
            format,
            speaking: false,
            loud_run: 0,
            silent_run: 0,
            preroll: VecDeque::with_capacity(PREROLL_FRAMES + 1),
            utterance: Vec::new(),
            playing_until: None,
            responses: 0,
            stream_item: Arc::from("echo-stream"),
            stream_started: false,
            samples: Vec::new(),
        }
    }

    fn frames_in(&self, d: Duration) -> usize {
        (d.as_millis() / u128::from(FRAME_MS)) as usize
    }

    fn on_frame(&mut self, frame: &[u8], now: Instant) -> Vec<ProviderEvent> {
        match self.mode {
            EchoMode::Stream => self.stream(frame),
            EchoMode::Utterance => self.utterance(frame, now),
        }
    }

    fn stream(&mut self, frame: &[u8]) -> Vec<ProviderEvent> {
        let mut events = Vec::with_capacity(2);
        if !self.stream_started {
            // A lead-in of silence is the delay: the pacer then plays everything at a
            // constant offset from the caller, and it absorbs the caller's jitter too.
            self.stream_started = true;
            let bytes = self.format.bytes_per_sec() * self.delay.as_millis() as usize / 1000;
            let silence = vec![0u8; bytes - bytes % self.format.bytes_per_sample()];
            events.push(ProviderEvent::Audio {
                item: self.stream_item.clone(),
                data: Bytes::from(silence),
            });
        }
        events.push(ProviderEvent::Audio {
            item: self.stream_item.clone(),
            data: Bytes::copy_from_slice(frame),
        });
        events
    }

    fn utterance(&mut self, frame: &[u8], now: Instant) -> Vec<ProviderEvent> {
        self.samples.clear();
        pcm::l16_to_samples(frame, &mut self.samples);
        let level = rms_dbfs(&self.samples);
        let mut events = Vec::new();

        if !self.speaking {
            self.loud_run = if level > SPEECH_START_DBFS {
                self.loud_run + 1
            } else {
                0
            };
            self.preroll.push_back(frame.to_vec());
            if self.preroll.len() > PREROLL_FRAMES {
                self.preroll.pop_front();
            }
            if self.loud_run >= START_FRAMES {
                self.speaking = true;
                self.silent_run = 0;
                self.utterance.clear();
                for f in self.preroll.drain(..) {
                    self.utterance.extend_from_slice(&f);
                }
                if self.playing_until.is_some_and(|until| now < until) {
                    self.playing_until = None;
                    events.push(ProviderEvent::SpeechStarted);
                }
            }
            return events;
        }

        self.utterance.extend_from_slice(frame);
        self.silent_run = if level > SPEECH_CONTINUE_DBFS {
            0
        } else {
            self.silent_run + 1
        };
        let too_long =
            self.utterance.len() >= self.format.bytes_per_sec() * MAX_UTTERANCE.as_secs() as usize;
        if self.silent_run < self.frames_in(END_SILENCE) && !too_long {
            return events;
        }

        self.speaking = false;
        self.loud_run = 0;
        // Keep a little of the trailing silence so the reply does not end abruptly.
        let trailing = self
            .silent_run
            .saturating_sub(self.frames_in(Duration::from_millis(100)));
        let keep = self
            .utterance
            .len()
            .saturating_sub(trailing * self.format.bytes_per_frame());
        self.utterance.truncate(keep);
        let speech = self.format.ms_of(self.utterance.len());
        if Duration::from_millis(speech) < MIN_UTTERANCE {
            self.utterance.clear();
            return events;
        }

        self.responses += 1;
        let item: ItemId = Arc::from(format!("echo-{}", self.responses));
        let reply = std::mem::take(&mut self.utterance);
        let burst = self.format.bytes_per_sec() * BURST.as_millis() as usize / 1000;
        for chunk in reply.chunks(burst.max(2)) {
            events.push(ProviderEvent::Audio {
                item: item.clone(),
                data: Bytes::copy_from_slice(chunk),
            });
        }
        events.push(ProviderEvent::ResponseDone);
        self.playing_until = Some(now + Duration::from_millis(speech));
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::signal::sine;

    fn echo(mode: EchoMode) -> Echo {
        Echo::new(
            EchoConfig {
                mode,
                delay: Duration::from_millis(200),
                sample_rate: 8000,
            },
            AudioFormat::l16(8000),
        )
    }

    fn frames(samples: &[i16]) -> Vec<Vec<u8>> {
        samples
            .chunks(160)
            .map(|c| {
                let mut b = Vec::new();
                pcm::samples_to_l16(c, &mut b);
                b
            })
            .collect()
    }

    fn feed(e: &mut Echo, samples: &[i16], t: &mut Instant) -> Vec<ProviderEvent> {
        let mut out = Vec::new();
        for f in frames(samples) {
            out.extend(e.on_frame(&f, *t));
            *t += Duration::from_millis(20);
        }
        out
    }

    fn audio_bytes(events: &[ProviderEvent]) -> usize {
        events
            .iter()
            .map(|e| match e {
                ProviderEvent::Audio { data, .. } => data.len(),
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn repeats_an_utterance_after_the_pause() {
        let mut e = echo(EchoMode::Utterance);
        let mut t = Instant::now();
        let tone = sine(8000, 440.0, -12.0, 8000); // 1 s
        let during = feed(&mut e, &tone, &mut t);
        assert_eq!(
            audio_bytes(&during),
            0,
            "nothing is sent while the caller talks"
        );
        let after = feed(&mut e, &vec![0; 8000], &mut t);
        let sent = audio_bytes(&after);
        // 1 s of speech, the pre-roll of silence it had none of, and <= 100 ms of tail.
        assert!(
            (16_000..=16_000 + 1_600).contains(&sent),
            "sent {sent} bytes"
        );
        assert!(matches!(after.last(), Some(ProviderEvent::ResponseDone)));
    }

    #[test]
    fn ignores_clicks_and_raises_barge_in_while_playing() {
        let mut e = echo(EchoMode::Utterance);
        let mut t = Instant::now();
        let click = sine(8000, 1000.0, -6.0, 160);
        let mut out = feed(&mut e, &click, &mut t);
        out.extend(feed(&mut e, &vec![0; 8000], &mut t));
        assert_eq!(audio_bytes(&out), 0, "a 20 ms click is not speech");

        feed(&mut e, &sine(8000, 440.0, -12.0, 16000), &mut t);
        // The reply (2 s) is produced after 600 ms of silence; talk 200 ms into it.
        feed(&mut e, &vec![0; 4800], &mut t);
        let barge = feed(&mut e, &sine(8000, 440.0, -12.0, 800), &mut t);
        assert!(barge
            .iter()
            .any(|e| matches!(e, ProviderEvent::SpeechStarted)));
    }

    #[test]
    fn stream_mode_prefixes_the_delay() {
        let mut e = echo(EchoMode::Stream);
        let mut t = Instant::now();
        let out = feed(&mut e, &vec![100; 320], &mut t);
        // 200 ms of silence + two 20 ms frames.
        assert_eq!(audio_bytes(&out), 3200 + 640);
    }
}
