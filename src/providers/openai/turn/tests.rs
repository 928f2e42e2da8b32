//! Unit tests of the OpenAI turn state (moved from `openai.rs`).

use serde_json::{json, Value};

use super::super::wire::*;
use super::*;

fn ev(v: Value) -> ServerEvent {
    serde_json::from_value(v).unwrap()
}

#[test]
fn late_deltas_of_an_interrupted_response_are_dropped() {
    let mut t = Turns::new();
    let mut out = Vec::new();
    assert_eq!(
        t.on_event(ev(json!({"type":"session.updated"})), &mut out),
        Step::Continue,
        "not ours: no session.update was sent yet"
    );
    t.setup_sent = true;
    assert_eq!(
        t.on_event(ev(json!({"type":"session.updated"})), &mut out),
        Step::Ready
    );
    t.on_event(
        ev(json!({"type":"response.created","response":{"id":"r1","status":"in_progress"}})),
        &mut out,
    );
    let delta = |r: &str, i: &str| {
        ev(
            json!({"type":"response.output_audio.delta","response_id":r,"item_id":i,
                   "output_index":0,"content_index":0,"delta":"//8="}),
        )
    };
    t.on_event(delta("r1", "i1"), &mut out);
    t.on_event(
        ev(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":10,"item_id":"u2"})),
        &mut out,
    );
    t.on_event(delta("r1", "i1"), &mut out);
    t.on_event(
        ev(
            json!({"type":"response.done","response":{"id":"r1","status":"cancelled",
                   "usage":{"input_tokens":7,"output_tokens":3}}}),
        ),
        &mut out,
    );
    t.on_event(
        ev(json!({"type":"response.created","response":{"id":"r2"}})),
        &mut out,
    );
    t.on_event(delta("r2", "i2"), &mut out);
    let kinds: Vec<String> = out
        .iter()
        .map(|e| match e {
            ProviderEvent::Audio { item, data } => format!("audio {item} {}", data.len()),
            ProviderEvent::Usage(u) => format!("usage {} {}", u.input_tokens, u.output_tokens),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "audio i1 2",
            "SpeechStarted",
            "usage 7 3",
            "ResponseDone",
            "audio i2 2"
        ]
    );
}

#[test]
fn errors_are_classified() {
    let mut t = Turns::new();
    let mut out = Vec::new();
    t.on_event(
        ev(json!({"type":"error","error":{"type":"invalid_request_error","code":"invalid_value",
                   "message":"bad voice","param":"session.audio.output.voice","event_id":SETUP_EVENT_ID}})),
        &mut out,
    );
    assert!(
        matches!(&out[0], ProviderEvent::Error { recoverable: false, code, .. } if code == "invalid_value")
    );
    t.ready = true;
    out.clear();
    t.on_event(
        ev(json!({"type":"error","error":{"type":"invalid_request_error","code":"item_truncate_invalid",
                   "message":"x","param":null,"event_id":null}})),
        &mut out,
    );
    assert!(matches!(
        &out[0],
        ProviderEvent::Error {
            recoverable: true,
            ..
        }
    ));
    out.clear();
    let step = t.on_event(
        ev(
            json!({"type":"error","error":{"type":"invalid_request_error","code":"session_expired",
                   "message":"Your session hit the maximum duration of 60 minutes."}}),
        ),
        &mut out,
    );
    assert_eq!(step, Step::Expiring);
    assert!(t.expired);
}

#[test]
fn raw_text_goes_through_the_same_handling() {
    let mut t = Turns::new();
    let mut out = Vec::new();
    assert_eq!(t.on_text("not json", &mut out), None);
    assert_eq!(t.on_text(r#"{"no_type":1}"#, &mut out), None);
    assert_eq!(
        t.on_text(r#"{"type":"session.created","session":{}}"#, &mut out),
        Some(TextOutcome {
            step: Step::Continue,
            session_created: true
        })
    );
    let updated = r#"{"type":"session.updated","session":{}}"#;
    assert_eq!(
        t.on_text(updated, &mut out).map(|o| o.step),
        Some(Step::Continue)
    );
    t.mark_setup_sent(true);
    assert_eq!(
        t.on_text(updated, &mut out).map(|o| o.step),
        Some(Step::Ready)
    );
    assert!(out.is_empty());
    t.on_text(
        r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"AAEC"}"#,
        &mut out,
    );
    assert!(matches!(&out[..], [ProviderEvent::Audio { data, .. }] if data[..] == [0, 1, 2]));
}

fn ready_turns() -> Turns {
    let mut t = Turns::new();
    t.setup_sent = true;
    t.ready = true;
    t
}

fn function_call_response(t: &mut Turns, out: &mut Vec<ProviderEvent>, calls: &[(&str, &str)]) {
    t.on_event(
        ev(json!({"type":"response.created","response":{"id":"r1","status":"in_progress"}})),
        out,
    );
    for (i, (call_id, args)) in calls.iter().enumerate() {
        let item = json!({"id": format!("fc{i}"), "type": "function_call", "status": "in_progress",
                          "call_id": call_id, "name": "lookup_order", "arguments": ""});
        t.on_event(
            ev(json!({"type":"response.output_item.added","response_id":"r1","output_index":i,"item":item})),
            out,
        );
        t.on_event(
            ev(
                json!({"type":"response.function_call_arguments.delta","response_id":"r1",
                      "item_id":format!("fc{i}"),"output_index":i,"call_id":call_id,"delta":"{\""}),
            ),
            out,
        );
        t.on_event(
            ev(json!({"type":"response.function_call_arguments.done","event_id":"e1","response_id":"r1",
                      "item_id":format!("fc{i}"),"output_index":i,"call_id":call_id,
                      "name":"lookup_order","arguments":args})),
            out,
        );
    }
}

fn result(id: &str, reply: bool) -> ToolResult {
    ToolResult {
        id: id.into(),
        name: "lookup_order".into(),
        output: json!({"status": "shipped", "eta": "tomorrow"}),
        is_error: false,
        reply,
    }
}

#[test]
fn function_calls_become_tool_calls_and_not_audio() {
    let mut t = ready_turns();
    let mut out = Vec::new();
    t.on_event(
        ev(json!({"type":"input_audio_buffer.speech_stopped","audio_end_ms":900,"item_id":"u1"})),
        &mut out,
    );
    assert!(matches!(&out[..], [ProviderEvent::SpeechStopped]));
    assert!(t.awaiting_answer);
    out.clear();
    function_call_response(
        &mut t,
        &mut out,
        &[("call_a", r#"{"order_id":"A42"}"#), ("call_b", "{not json")],
    );
    assert_eq!(
        out.iter()
            .map(|e| match e {
                ProviderEvent::ToolCall(c) => (**c).clone(),
                other => panic!("only tool calls expected, got {other:?}"),
            })
            .collect::<Vec<_>>(),
        [
            ToolCall {
                id: "call_a".into(),
                name: "lookup_order".into(),
                arguments: json!({"order_id": "A42"})
            },
            ToolCall {
                id: "call_b".into(),
                name: "lookup_order".into(),
                arguments: json!("{not json")
            },
        ]
    );
    assert!(!t.awaiting_answer, "a call is an answer: no watchdog");
    assert_eq!(t.current_response.as_deref(), Some("r1"));
    out.clear();
    t.on_event(
        ev(
            json!({"type":"response.done","response":{"id":"r1","status":"completed",
                  "output":[{"type":"function_call","call_id":"call_a"}],
                  "usage":{"input_tokens":5,"output_tokens":2}}}),
        ),
        &mut out,
    );
    assert!(matches!(
        &out[..],
        [ProviderEvent::Usage(_), ProviderEvent::ResponseDone]
    ));
    assert!(t.current_response.is_none());
    assert!(t.item.is_none(), "no audio item came of it");
}

#[test]
fn one_response_create_after_the_last_result_and_the_response_done() {
    let mut t = ready_turns();
    let mut out = Vec::new();
    function_call_response(
        &mut t,
        &mut out,
        &[("call_a", "{}"), ("call_b", r#"{"x":1}"#)],
    );
    let item = t.tool_result(&result("call_a", true));
    assert_eq!(
        item,
        json!({"type": "conversation.item.create", "item": {"type": "function_call_output",
               "call_id": "call_a", "output": r#"{"eta":"tomorrow","status":"shipped"}"#}})
    );
    let output: Value = serde_json::from_str(item["item"]["output"].as_str().unwrap()).unwrap();
    assert_eq!(output, json!({"status": "shipped", "eta": "tomorrow"}));
    assert!(!t.reply_due(), "response active and call_b open");
    t.on_event(
        ev(json!({"type":"response.done","response":{"id":"r1","status":"completed"}})),
        &mut out,
    );
    assert!(!t.reply_due(), "call_b still open");
    t.tool_result(&result("call_b", true));
    assert!(t.reply_due());
    assert!(t.awaiting_answer, "the watchdog waits for the answer");
    assert!(!t.reply_due(), "one response.create per batch");
}

#[test]
fn results_without_reply_never_ask_for_one() {
    let mut t = ready_turns();
    let mut out = Vec::new();
    function_call_response(&mut t, &mut out, &[("call_end", "{}")]);
    t.on_event(
        ev(json!({"type":"response.done","response":{"id":"r1","status":"completed"}})),
        &mut out,
    );
    t.tool_result(&result("call_end", false));
    assert!(!t.reply_due());
    // A result nobody asked for still goes out, and does not block later replies.
    let item = t.tool_result(&result("call_unknown", true));
    assert_eq!(item["item"]["call_id"], "call_unknown");
    assert!(t.reply_due());
}

#[test]
fn a_response_started_after_the_output_joined_answers_it() {
    let mut t = ready_turns();
    let mut out = Vec::new();
    function_call_response(&mut t, &mut out, &[("call_a", "{}")]);
    t.on_event(
        ev(json!({"type":"response.done","response":{"id":"r1","status":"completed"}})),
        &mut out,
    );
    // The caller talks while the webhook runs: the result arrives during the
    // server's own response, which started before the output was added.
    t.on_event(
        ev(json!({"type":"response.created","response":{"id":"r2"}})),
        &mut out,
    );
    t.tool_result(&result("call_a", true));
    t.on_event(
        ev(json!({"type":"conversation.item.added","previous_item_id":null,
                  "item":{"id":"o1","type":"function_call_output","call_id":"call_a","output":"{}"}})),
        &mut out,
    );
    assert!(!t.reply_due(), "r2 is active");
    t.on_event(
        ev(json!({"type":"response.done","response":{"id":"r2","status":"completed"}})),
        &mut out,
    );
    assert!(t.reply_due(), "r2 did not see the result");

    // Now a server response created after the output was added does see it.
    function_call_response(&mut t, &mut out, &[("call_c", "{}")]);
    t.on_event(
        ev(json!({"type":"response.done","response":{"id":"r1","status":"completed"}})),
        &mut out,
    );
    t.tool_result(&result("call_c", true));
    t.on_event(
        ev(json!({"type":"conversation.item.added","previous_item_id":null,
                  "item":{"id":"o2","type":"function_call_output","call_id":"call_c","output":"{}"}})),
        &mut out,
    );
    t.on_event(
        ev(json!({"type":"response.created","response":{"id":"r3"}})),
        &mut out,
    );
    t.on_event(
        ev(json!({"type":"response.done","response":{"id":"r3","status":"completed"}})),
        &mut out,
    );
    assert!(!t.reply_due(), "r3 answered the result already");
}

#[test]
fn calls_of_an_interrupted_response_are_not_run() {
    let mut t = ready_turns();
    let mut out = Vec::new();
    t.on_event(
        ev(json!({"type":"response.created","response":{"id":"r1"}})),
        &mut out,
    );
    t.on_event(
        ev(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":10,"item_id":"u2"})),
        &mut out,
    );
    t.on_event(
        ev(
            json!({"type":"response.function_call_arguments.done","response_id":"r1","item_id":"fc",
                  "output_index":0,"call_id":"call_x","name":"end_call","arguments":"{\"rea"}),
        ),
        &mut out,
    );
    assert!(matches!(&out[..], [ProviderEvent::SpeechStarted]));
    assert!(t.tools.open.is_empty());
}

#[test]
fn unknown_events_are_ignored() {
    let mut t = Turns::new();
    let mut out = Vec::new();
    t.on_event(
        ev(json!({"type":"rate_limits.updated","rate_limits":[]})),
        &mut out,
    );
    t.on_event(ev(json!({"type":"something.new","x":1})), &mut out);
    assert!(out.is_empty());
}

#[test]
fn keys_become_a_user_item_and_one_answer_after_the_active_response() {
    let mut t = ready_turns();
    let mut out = Vec::new();
    t.on_event(
        ev(json!({"type":"response.created","response":{"id":"r1"}})),
        &mut out,
    );
    let item = t.dtmf("42#");
    assert_eq!(item["type"], "conversation.item.create");
    assert_eq!(item["item"]["id"], "vb_dtmf_1");
    assert_eq!(item["item"]["role"], "user");
    assert_eq!(
        item["item"]["content"][0]["text"],
        "[The caller pressed keys on the phone keypad: 4 2 #]"
    );
    assert!(!t.reply_due(), "a response is active: the answer waits");
    t.on_event(
        ev(json!({"type":"conversation.item.added","item":{"id":"vb_dtmf_1","type":"message"}})),
        &mut out,
    );
    t.on_event(
        ev(json!({"type":"response.done","response":{"id":"r1","status":"completed"}})),
        &mut out,
    );
    assert!(t.reply_due(), "after the response: one response.create");
    assert!(!t.reply_due(), "only one");
    assert_eq!(
        t.dtmf("1")["item"]["content"][0]["text"],
        "[The caller pressed a key on the phone keypad: 1]"
    );
}

#[test]
fn without_interrupt_response_the_reply_goes_on_until_we_cancel() {
    let mut t = Turns::new();
    t.mark_setup_sent(false);
    let mut out = Vec::new();
    t.on_event(ev(json!({"type":"session.updated"})), &mut out);
    t.on_event(
        ev(json!({"type":"response.created","response":{"id":"r1"}})),
        &mut out,
    );
    let delta = || {
        ev(
            json!({"type":"response.output_audio.delta","response_id":"r1","item_id":"i1","delta":"//8="}),
        )
    };
    t.on_event(
        ev(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":10,"item_id":"u2"})),
        &mut out,
    );
    t.on_event(delta(), &mut out);
    let audio = |out: &[ProviderEvent]| {
        out.iter()
            .filter(|e| matches!(e, ProviderEvent::Audio { .. }))
            .count()
    };
    assert_eq!(
        audio(&out),
        1,
        "a cough is not a barge-in: the reply still plays"
    );
    t.cancelling();
    t.on_event(delta(), &mut out);
    assert_eq!(audio(&out), 1, "after our cancel its late audio is dropped");
}
