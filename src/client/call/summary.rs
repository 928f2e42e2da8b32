//! What `voicebridge call` measured, and how it is printed: one JSON object with `--json`
//! (a documented contract: scripts and tests read these field names), else a short
//! human-readable report.

use serde::{Deserialize, Serialize};

/// The wire format of the call.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FormatSummary {
    pub codec: String,
    pub rate: u32,
    pub channels: String,
    pub frame_ms: u32,
}

/// Who started the closing handshake.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    /// We sent Close (end of the WAV + tail, or Ctrl-C), like a hangup.
    Client,
    /// The server sent Close first.
    Server,
    /// The connection ended without any Close frame (reset, EOF, protocol error).
    None,
}

/// How the call ended.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CloseSummary {
    pub by: ClosedBy,
    /// Code of the first Close frame (ours when `by` is `client`).
    pub code: Option<u16>,
    pub reason: Option<String>,
    /// Client close only: the server answered our Close at all (waited up to 2 s).
    pub echoed: Option<bool>,
    /// Client close only: it answered within the 1 s the module waits.
    pub echoed_within_1s: Option<bool>,
    /// Client close only: the server's Close code.
    pub echo_code: Option<u16>,
    pub echo_ms: Option<u64>,
    /// Transport error that ended the call, if any.
    pub error: Option<String>,
}

/// Everything measured during a call; `--json` prints it as one object.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CallSummary {
    pub call_id: String,
    /// The URL used, with token values and credentials removed.
    pub url: String,
    pub format: FormatSummary,
    /// Wall time from connecting to the end of the closing handshake.
    pub duration_ms: u64,
    /// The call was ended early by Ctrl-C.
    pub interrupted: bool,
    pub metadata_sent: bool,
    /// Audio frames sent before the metadata (0 = metadata first).
    pub metadata_after_frames: Option<u64>,
    /// Binary audio messages sent (WAV + silence tail) and their payload bytes.
    pub frames_sent: u64,
    pub bytes_sent: u64,
    /// Of `frames_sent`, how many were the silence tail.
    pub tail_frames_sent: u64,
    pub audio_sent_ms: u64,
    /// Playback audio messages (binary frames + decodable streamAudio) and payload bytes.
    pub frames_received: u64,
    pub bytes_received: u64,
    pub audio_received_ms: u64,
    /// All TEXT frames received.
    pub text_messages_received: u64,
    pub stream_audio_messages: u64,
    pub clear_audio_count: u64,
    /// TEXT frames that are neither streamAudio nor clearAudio, and the last few of them.
    pub other_text_messages: u64,
    pub last_other_texts: Vec<String>,
    /// From the first audio frame sent to the first playback audio received.
    pub first_audio_latency_ms: Option<u64>,
    /// Where the caller's first utterance ends in the WAV (energy endpoint), if found.
    pub speech_end_offset_ms: Option<u64>,
    /// From sending that endpoint to the first playback audio received after it.
    pub speech_end_to_first_audio_ms: Option<u64>,
    /// Responses heard (playback runs separated by more than RESPONSE_END_GAP_MS or a clear).
    pub responses: u64,
    /// Times the simulated buffer ran dry mid-response and then resumed.
    pub underrun_gaps: u64,
    pub underrun_max_ms: u64,
    /// `raw` streamAudio at a rate other than the call rate (the `.r24` trap): a server bug.
    pub raw_rate_mismatches: u64,
    /// Other undecodable playback (bad base64, bad JSON, unsupported type, odd length).
    pub bad_playback_messages: u64,
    /// The first few playback errors, as messages.
    pub playback_errors: Vec<String>,
    pub pings_sent: u64,
    pub pongs_received: u64,
    pub pings_received: u64,
    pub out_wav: Option<String>,
    pub out_ms: u64,
    pub close: CloseSummary,
}

fn opt_ms(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v} ms"))
}

/// Prints the summary to stdout: human-readable, or one JSON object with `json`.
pub fn print_summary(summary: &CallSummary, json: bool) {
    if json {
        match serde_json::to_string(summary) {
            Ok(s) => println!("{s}"),
            // Serialising plain data cannot fail in practice; say so rather than print nothing.
            Err(e) => println!("{{\"error\":\"cannot serialise summary: {e}\"}}"),
        }
        return;
    }
    print!("{}", human_summary(summary));
}

fn human_summary(s: &CallSummary) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let f = &s.format;
    let _ = writeln!(o, "call        {}", s.call_id);
    let _ = writeln!(o, "url         {}", s.url);
    let _ = writeln!(
        o,
        "format      {}/{} {}, {} ms frames",
        f.codec, f.rate, f.channels, f.frame_ms
    );
    let _ = writeln!(
        o,
        "duration    {:.1} s{}",
        s.duration_ms as f64 / 1000.0,
        if s.interrupted { " (interrupted)" } else { "" }
    );
    let meta = match (s.metadata_sent, s.metadata_after_frames) {
        (true, Some(0)) => "before audio".to_string(),
        (true, Some(n)) => format!("after {n} frames"),
        (false, None) => "not sent (--no-metadata)".to_string(),
        (_, _) => "NOT sent (call ended first)".to_string(),
    };
    let _ = writeln!(o, "metadata    {meta}");
    let _ = writeln!(
        o,
        "sent        {} frames, {} bytes, {} ms audio ({} tail frames)",
        s.frames_sent, s.bytes_sent, s.audio_sent_ms, s.tail_frames_sent
    );
    let _ = writeln!(
        o,
        "received    {} audio frames, {} bytes, {} ms audio; {} text ({} streamAudio, {} other)",
        s.frames_received,
        s.bytes_received,
        s.audio_received_ms,
        s.text_messages_received,
        s.stream_audio_messages,
        s.other_text_messages
    );
    let _ = writeln!(o, "clearAudio  {}", s.clear_audio_count);
    let _ = writeln!(
        o,
        "latency     first audio {}; after speech end (at {}) {}",
        opt_ms(s.first_audio_latency_ms),
        opt_ms(s.speech_end_offset_ms),
        opt_ms(s.speech_end_to_first_audio_ms)
    );
    let _ = writeln!(
        o,
        "playback    {} responses, {} underrun gaps (max {} ms), {} ms recorded{}",
        s.responses,
        s.underrun_gaps,
        s.underrun_max_ms,
        s.out_ms,
        s.out_wav
            .as_ref()
            .map_or_else(String::new, |p| format!(" to {p}"))
    );
    if s.raw_rate_mismatches > 0 || s.bad_playback_messages > 0 {
        let _ = writeln!(
            o,
            "ERRORS      {} raw rate mismatches, {} bad playback messages",
            s.raw_rate_mismatches, s.bad_playback_messages
        );
        for e in &s.playback_errors {
            let _ = writeln!(o, "            {e}");
        }
    }
    let _ = writeln!(
        o,
        "pings       {} sent, {} pongs; {} received",
        s.pings_sent, s.pongs_received, s.pings_received
    );
    let c = &s.close;
    let by = match c.by {
        ClosedBy::Client => "client",
        ClosedBy::Server => "server",
        ClosedBy::None => "nobody (connection lost)",
    };
    let mut line = format!("close       by {by}");
    if let Some(code) = c.code {
        let _ = write!(line, ", {code} {:?}", c.reason.as_deref().unwrap_or(""));
    }
    match (c.echoed, c.echoed_within_1s) {
        (Some(true), Some(true)) => {
            let _ = write!(line, "; echoed in {}", opt_ms(c.echo_ms));
        }
        (Some(true), _) => {
            let _ = write!(
                line,
                "; echoed LATE in {} (the module waits 1 s)",
                opt_ms(c.echo_ms)
            );
        }
        (Some(false), _) => line.push_str("; NOT echoed"),
        _ => {}
    }
    if let Some(e) = &c.error {
        let _ = write!(line, "; error: {e}");
    }
    let _ = writeln!(o, "{line}");
    for t in &s.last_other_texts {
        let _ = writeln!(o, "text        {t}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_summary() -> CallSummary {
        CallSummary {
            call_id: "x".into(),
            url: "ws://h:1/call/x?token=***".into(),
            format: FormatSummary {
                codec: "L16".into(),
                rate: 8000,
                channels: "mono".into(),
                frame_ms: 20,
            },
            duration_ms: 1,
            interrupted: false,
            metadata_sent: true,
            metadata_after_frames: Some(0),
            frames_sent: 1,
            bytes_sent: 320,
            tail_frames_sent: 0,
            audio_sent_ms: 20,
            frames_received: 1,
            bytes_received: 320,
            audio_received_ms: 20,
            text_messages_received: 1,
            stream_audio_messages: 0,
            clear_audio_count: 0,
            other_text_messages: 1,
            last_other_texts: vec!["hello".into()],
            first_audio_latency_ms: Some(3),
            speech_end_offset_ms: None,
            speech_end_to_first_audio_ms: None,
            responses: 1,
            underrun_gaps: 0,
            underrun_max_ms: 0,
            raw_rate_mismatches: 1,
            bad_playback_messages: 0,
            playback_errors: vec!["oops".into()],
            pings_sent: 0,
            pongs_received: 0,
            pings_received: 0,
            out_wav: None,
            out_ms: 20,
            close: CloseSummary {
                by: ClosedBy::Client,
                code: Some(1000),
                reason: Some("Normal closure".into()),
                echoed: Some(true),
                echoed_within_1s: Some(true),
                echo_code: Some(1000),
                echo_ms: Some(1),
                error: None,
            },
        }
    }

    #[test]
    fn summary_round_trips_through_json_and_prints() {
        let s = sample_summary();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""by":"client""#), "{json}");
        let back: CallSummary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let human = human_summary(&s);
        assert!(human.contains("echoed in 1 ms"), "{human}");
        assert!(human.contains("ERRORS"), "{human}");
    }
}
