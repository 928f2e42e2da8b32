//! Unit tests of the Gemini socket task's decisions (moved from `gemini/mod.rs`).

use base64::Engine;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::*;

fn gemini(events: queue::Sender<ProviderEvent>, timeout: Duration) -> Gemini {
    Gemini {
        s: Settings {
            url: "ws://127.0.0.1:1/x".into(),
            api_key: Secret::new("AIzaTEST"),
            model: "models/gemini-2.5-flash".into(),
            voice: "Kore".into(),
            language: String::new(),
            response_timeout: timeout,
            instructions: String::new(),
            greeting: String::new(),
            tools: None,
            tools_dropped: Vec::new(),
            no_interruption: false,
        },
        instructions: String::new(),
        greeting: String::new(),
        events,
        active: None,
        retiring: None,
        retire_deadline: Instant::now(),
        resume: None,
        lost: None,
        unresumable: None,
        handle: None,
        connections: 1,
        drop_resumes: 0,
        ready: false,
        setup_deadline: Instant::now(),
        switch_buffer: VecDeque::new(),
        switch_dropped: 0,
        turn: Turn::default(),
        watchdog: None,
        watchdog_warned: false,
        rate_warned: false,
        calls: HashMap::new(),
        cancelled: HashSet::new(),
        orphans: Vec::new(),
        call_seq: 0,
    }
}

fn audio(samples: usize) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(vec![1u8; samples * 2]);
    format!(
        r#"{{"serverContent":{{"modelTurn":{{"parts":[{{"inlineData":{{"mimeType":"audio/pcm;rate=24000","data":"{data}"}}}},{{"text":"x"}},{{"inlineData":{{"mimeType":"audio/pcm;rate=24000","data":"{data}"}}}}]}}}}}}"#
    )
}

fn drain(rx: &mut queue::Receiver<ProviderEvent>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(match e {
            ProviderEvent::Ready { input, output } => format!("ready {input} {output}"),
            ProviderEvent::Audio { item, data } => format!("audio {item} {}", data.len()),
            ProviderEvent::SpeechStarted => "speech".into(),
            ProviderEvent::ResponseDone => "done".into(),
            ProviderEvent::Transcript {
                who,
                text,
                is_final,
            } => format!("{} {text} {is_final}", who.name()),
            ProviderEvent::Usage(u) => format!("usage {} {}", u.input_tokens, u.output_tokens),
            ProviderEvent::Warning(w) => format!("warning {w}"),
            other => format!("{other:?}"),
        });
    }
    out
}

#[tokio::test]
async fn turns_interruptions_transcripts_and_usage() {
    let (tx, mut rx) = queue::bounded(64);
    let mut g = gemini(tx, Duration::ZERO);
    let msgs = [
        r#"{"setupComplete":{}}"#.to_owned(),
        r#"{"serverContent":{"inputTranscription":{"text":"Hi "}}}"#.to_owned(),
        r#"{"serverContent":{"inputTranscription":{"text":"there"}}}"#.to_owned(),
        audio(480),
        r#"{"serverContent":{"outputTranscription":{"text":"Hello"}}}"#.to_owned(),
        r#"{"usageMetadata":{"promptTokenCount":5,"responseTokenCount":1}}"#.to_owned(),
        r#"{"serverContent":{"generationComplete":true}}"#.to_owned(),
        r#"{"serverContent":{"turnComplete":true},"usageMetadata":{"promptTokenCount":10,"responseTokenCount":4}}"#.to_owned(),
        audio(240),
        r#"{"serverContent":{"interrupted":true}}"#.to_owned(),
        audio(240),
        r#"{"serverContent":{"turnComplete":true}}"#.to_owned(),
        audio(240),
    ];
    for m in &msgs {
        assert!(g.on_message(m, false).await.is_ok());
    }
    assert_eq!(
        drain(&mut rx),
        vec![
            "ready L16/16000 L16/24000",
            "caller Hi  false",
            "SpeechStopped",
            "caller there false",
            "audio turn-1 960",
            "audio turn-1 960",
            "assistant Hello false",
            "caller Hi there true",
            "assistant Hello true",
            "usage 10 4",
            "done",
            "audio turn-2 480",
            "audio turn-2 480",
            "speech",
            // the late parts of turn-2 are gone
            "done",
            "audio turn-3 480",
            "audio turn-3 480",
        ]
    );
}

#[tokio::test]
async fn watchdog_arms_on_caller_transcription_only_between_turns() {
    let (tx, _rx) = queue::bounded(64);
    let mut g = gemini(tx, Duration::from_secs(5));
    g.ready = true;
    let caller = r#"{"serverContent":{"inputTranscription":{"text":"hello"}}}"#;
    assert!(g.on_message(caller, false).await.is_ok());
    assert!(g.watchdog.is_some(), "caller spoke, nothing answered yet");
    assert!(g.on_message(&audio(10), false).await.is_ok());
    assert!(g.watchdog.is_none(), "model audio disarms it");
    assert!(g.on_message(caller, false).await.is_ok());
    assert!(g.watchdog.is_none(), "not while the model turn is open");
    let done = r#"{"serverContent":{"turnComplete":true}}"#;
    assert!(g.on_message(done, false).await.is_ok());
    assert!(g.on_message(caller, false).await.is_ok());
    assert!(g.watchdog.is_some());
}

#[tokio::test]
async fn tool_calls_cancellations_and_results() {
    let (tx, mut rx) = queue::bounded(64);
    let mut g = gemini(tx, Duration::from_secs(5));
    g.ready = true;
    let caller = r#"{"serverContent":{"inputTranscription":{"text":"book it"}}}"#;
    assert!(g.on_message(caller, false).await.is_ok());
    assert!(g.watchdog.is_some());
    let call = r#"{"toolCall":{"functionCalls":[
        {"id":"fc_1","name":"book_appointment","args":{"day":"monday"}},
        {"id":"fc_2","name":"end_call"},
        {"name":"no_id","args":{}}]}}"#;
    assert!(g.on_message(call, false).await.is_ok());
    assert!(
        g.watchdog.is_none(),
        "a call is an answer: no silence warning"
    );
    let cancel = r#"{"toolCallCancellation":{"ids":["fc_2"]}}"#;
    assert!(g.on_message(cancel, false).await.is_ok());
    let events = drain(&mut rx);
    assert_eq!(
        &events[2..],
        [
            r#"ToolCall(ToolCall { id: "fc_1", name: "book_appointment", arguments: Object {"day": String("monday")} })"#,
            r#"ToolCall(ToolCall { id: "fc_2", name: "end_call", arguments: Null })"#,
            r#"ToolCall(ToolCall { id: "gemini-call-1", name: "no_id", arguments: Object {} })"#,
            r#"ToolCancelled(["fc_2"])"#,
        ]
    );
    assert_eq!(g.calls.len(), 2);
    assert_eq!(g.calls["gemini-call-1"].wire_id, "");

    let result = |id: &str, name: &str| ToolResult {
        id: id.into(),
        name: name.into(),
        output: serde_json::json!({"booked": true}),
        is_error: false,
        reply: true,
    };
    // The cancelled call's result goes nowhere, and is forgotten.
    g.on_tool_result(result("fc_2", "end_call")).await;
    assert!(g.orphans.is_empty() && g.cancelled.is_empty());
    // A result for an id never issued is dropped.
    g.on_tool_result(result("fc_9", "x")).await;
    assert!(g.orphans.is_empty());
    // fc_1 came on connection 1; no connection is open now (as while a dropped one
    // is being resumed): it waits, as text, for the new connection.
    g.on_tool_result(result("fc_1", "book_appointment")).await;
    assert_eq!(g.orphans.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&g.orphans[0]).unwrap();
    let text = v["clientContent"]["turns"][0]["parts"][0]["text"]
        .as_str()
        .unwrap();
    assert!(
        text.contains("book_appointment") && text.contains(r#"{"booked":true}"#),
        "{text}"
    );
    assert_eq!(g.calls.len(), 1);
}

#[tokio::test]
async fn tool_calls_on_a_retired_connection_are_not_run() {
    let (tx, mut rx) = queue::bounded(64);
    let mut g = gemini(tx, Duration::ZERO);
    let call = r#"{"toolCall":{"functionCalls":[{"id":"fc_1","name":"t","args":{}}]}}"#;
    assert!(g.on_message(call, true).await.is_ok());
    assert!(drain(&mut rx).is_empty());
    assert!(g.calls.is_empty());
}

#[tokio::test]
async fn resumption_handles_only_when_resumable() {
    let (tx, _rx) = queue::bounded(64);
    let mut g = gemini(tx, Duration::ZERO);
    let upd = |h: &str, r: bool| {
        format!(r#"{{"sessionResumptionUpdate":{{"newHandle":"{h}","resumable":{r}}}}}"#)
    };
    assert!(g.on_message(&upd("a", true), false).await.is_ok());
    assert!(g.on_message(&upd("", false), false).await.is_ok());
    assert!(g.on_message(&upd("b", true), true).await.is_ok());
    assert_eq!(
        g.handle.as_deref(),
        Some("a"),
        "retired connection's handle ignored"
    );
    assert!(g.on_message(&upd("c", true), false).await.is_ok());
    assert_eq!(g.handle.as_deref(), Some("c"));
}

#[test]
fn close_descriptions() {
    let frame = CloseFrame {
        code: CloseCode::Policy,
        reason: "API key not valid: AIzaFAKE123".into(),
    };
    let (desc, code) = describe_close(Some(frame), &["AIzaFAKE123"]);
    assert_eq!(desc, "code 1008: API key not valid: [redacted]");
    assert_eq!(code, Some(1008));
    assert!(is_final_close(1008) && is_final_close(1007));
    assert!(!is_final_close(1011) && !is_final_close(1000) && !is_final_close(1001));
    assert_eq!(describe_close(None, &[]).0, "no close code");
}
