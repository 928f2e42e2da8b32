//! Function calling end to end with the OpenAI Realtime (GA) provider: the real
//! `voicebridge` binary, the fake FreeSWITCH, the validating Realtime mock (which calls
//! functions the way the server does) and a local webhook server standing in for the
//! business's systems.
//!
//! What is checked on the wire: the `tools` declared in `session.update`, the signed
//! webhook POST, the `function_call_output` item the model gets back (a JSON string),
//! exactly one `response.create` once the calling response is done and every call of
//! it has its result, and the assistant's follow-up audio at FreeSWITCH.

mod common;

use common::call::{Call, Collected};
use common::daemon::{field, Daemon, HANG_GUARD};
use common::mock_openai::{
    FunctionOutput, MockCall, MockFormat, MockOpenAi, MockOptions, MockState, Script,
};
use common::webhook_server::{Reply, ToolRequest, WebhookServer};
use serde_json::{json, Value};

const KEY: &str = "fake-openai-test-key-0123456789abcdefXYZ";
const SECRET: &str = "test-webhook-secret-not-a-real-one";
const ORDER_PARAMS: &str = r#"{"type":"object","properties":{"order_id":{"type":"string","description":"The order number, e.g. A42"}},"required":["order_id"]}"#;

/// A `[[call.tools]]` table.
fn tool(name: &str, description: &str, parameters: &str, url: &str, timeout_ms: u64) -> String {
    format!(
        r#"
[[call.tools]]
name = "{name}"
description = "{description}"
parameters = '{parameters}'
url = "{url}"
timeout_ms = {timeout_ms}
"#
    )
}

fn config(tools: &str) -> String {
    format!(
        r#"
[freeswitch]
playback = "binary"
playback_lead_ms = 60

[webhooks]
secret = "{SECRET}"

[call]
provider = "openai"
instructions = "You answer the phone for ACME."

[providers.openai]
model = "gpt-realtime"
voice = "marin"
audio_format = "pcmu"
{tools}
"#
    )
}

async fn start(tools: &str, mock: &MockOpenAi) -> Daemon {
    let url = mock.url();
    Daemon::start(
        &config(tools),
        &[
            ("VOICEBRIDGE__PROVIDERS__OPENAI__URL", url.as_str()),
            ("OPENAI_API_KEY", KEY),
        ],
    )
    .await
}

/// A call whose caller keeps talking (quietly) until the test closes it.
async fn connect(daemon: &Daemon, id: &str) -> Call {
    Call::with_caller(daemon, id, 8000, 30.0).await
}

fn assert_no_problems(mock: &MockOpenAi) {
    let (problems, errors) = mock.with(|s| (s.problems.clone(), s.errors_sent.clone()));
    assert!(
        problems.is_empty(),
        "the mock found problems: {problems:#?}"
    );
    assert!(errors.is_empty(), "the mock sent errors: {errors:?}");
}

/// The types of the client events after index `from`.
fn types_after(s: &MockState, from: usize) -> Vec<String> {
    s.client_events[from + 1..]
        .iter()
        .map(|v| v["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Waits for the follow-up response to the tool outputs to have been streamed.
async fn wait_follow_up(mock: &MockOpenAi) {
    mock.wait("the response after the tool outputs", |s| {
        s.responses
            .iter()
            .any(|r| r.after_tool_output && r.status == "completed")
    })
    .await;
}

/// The single output the model got, after waiting for it.
async fn the_output(mock: &MockOpenAi) -> FunctionOutput {
    mock.wait("a function_call_output", |s| !s.function_outputs.is_empty())
        .await;
    let outputs = mock.with(|s| s.function_outputs.clone());
    assert_eq!(outputs.len(), 1, "{outputs:#?}");
    outputs.into_iter().next().unwrap()
}

/// PCMU passes through untouched, so what FreeSWITCH got is exactly the mock's audio.
fn assert_heard_everything(mock: &MockOpenAi, got: &Collected) {
    let reference: Vec<i16> =
        mock.with(|s| s.responses.iter().flat_map(|r| r.samples.clone()).collect());
    let audio = got.audio();
    assert!(
        audio.len() >= reference.len(),
        "{} < {}",
        audio.len(),
        reference.len()
    );
    assert_eq!(&audio[..reference.len()], &reference[..]);
}

/// The model says "let me check", calls `lookup_order`; the signed webhook answers, the
/// model gets the answer as a JSON string, one `response.create`, and speaks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_answer_goes_back_to_the_model_and_the_conversation_goes_on() {
    let hooks = WebhookServer::start().await;
    let answer =
        json!({"order_id": "A42", "status": "shipped", "eta": "tomorrow", "items": [1, 2]});
    hooks.respond("/orders", Reply::Json(answer.clone()));
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let tools = tool(
        "lookup_order",
        "Find an order by its number.",
        ORDER_PARAMS,
        &hooks.url("/orders"),
        2000,
    );
    let daemon = start(&tools, &mock).await;
    let id = "oai-tool-ok";
    let call = connect(&daemon, id).await;

    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    let session = mock.with(|s| s.session_update.clone()).unwrap()["session"].clone();
    assert_eq!(
        session["tools"],
        json!([{"type": "function", "name": "lookup_order",
                "description": "Find an order by its number.",
                "parameters": serde_json::from_str::<Value>(ORDER_PARAMS).unwrap()}])
    );
    assert_eq!(session["tool_choice"], "auto");

    mock.script(Script::say_then_call(
        600,
        41,
        "lookup_order",
        json!({"order_id": "A42"}),
    ));
    hooks.wait_for("/orders", 1).await;
    let output = the_output(&mock).await;
    wait_follow_up(&mock).await;
    call.wait_received(30 + 40).await;
    let (_, got) = call.close().await;
    assert!(got.error.is_none(), "{:?}", got.error);

    // The webhook: one signed POST naming the tool, the call, the route and the arguments.
    let issued = mock.with(|s| s.function_calls.clone());
    assert_eq!(issued.len(), 1);
    hooks.the_tool_request(
        "/orders",
        ToolRequest {
            secret: SECRET,
            tool: "lookup_order",
            tool_call_id: &issued[0].call_id,
            call_id: id,
            arguments: json!({"order_id": "A42"}),
        },
    );

    // The model: the webhook's answer as a JSON string, then exactly one response.create,
    // sent once the calling response was done (the mock flags one during a response).
    assert_eq!(output.call_id, issued[0].call_id);
    assert!(output.accepted);
    assert_eq!(output.parsed.as_ref(), Some(&answer), "{}", output.output);
    let after = mock.with(|s| types_after(s, output.event_index));
    assert_eq!(
        after.iter().filter(|t| *t == "response.create").count(),
        1,
        "{after:?}"
    );
    assert_eq!(after[0], "response.create", "{after:?}");
    let (responses, creates) = mock.with(|s| {
        (
            s.responses.clone(),
            s.client_types()
                .iter()
                .filter(|t| *t == "response.create")
                .count(),
        )
    });
    assert_eq!(creates, 1, "no greeting here: the only response.create");
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[0].function_calls, [issued[0].call_id.clone()]);
    assert!(responses[1].after_tool_output);
    assert_no_problems(&mock);

    // FreeSWITCH: "let me check" and the answer after the lookup, bit-exact.
    assert_heard_everything(&mock, &got);

    let summary = daemon.wait_call_end(id).await;
    assert_eq!(field(&summary, "tool_calls"), 1);
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    daemon.stop().await;
}

/// One response calls two functions: each gets its output, and ONE `response.create`
/// follows the last of them, once the response is done, not one per result. The mock
/// holds the second call until the first output is in, so that output arrives while
/// the response is still active (where a `response.create` would be refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_calls_in_one_response_get_one_response_create() {
    let hooks = WebhookServer::start().await;
    hooks.respond("/orders", Reply::Json(json!({"status": "shipped"})));
    hooks.respond("/stock", Reply::Json(json!({"in_stock": 3})));
    let mut options = MockOptions::new(MockFormat::Pcmu, KEY);
    options.calls_wait_for_outputs = true;
    let mock = MockOpenAi::start(options).await;
    let tools = tool(
        "lookup_order",
        "Find an order by its number.",
        ORDER_PARAMS,
        &hooks.url("/orders"),
        2000,
    ) + &tool(
        "check_stock",
        "How many of an item are in stock.",
        r#"{"type":"object","properties":{"sku":{"type":"string"}}}"#,
        &hooks.url("/stock"),
        5000,
    );
    let daemon = start(&tools, &mock).await;
    let id = "oai-tool-two";
    let call = connect(&daemon, id).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    let declared: Vec<Value> = mock.with(|s| {
        s.session_update.as_ref().unwrap()["session"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].clone())
            .collect()
    });
    assert_eq!(declared, [json!("lookup_order"), json!("check_stock")]);

    mock.script(Script::FunctionCall {
        caller_turn: true,
        speech_ms: 0,
        seed: 0,
        calls: vec![
            MockCall::new("lookup_order", json!({"order_id": "A42"})),
            MockCall::new("check_stock", json!({"sku": "X-1"})),
        ],
    });
    mock.wait("both outputs", |s| s.function_outputs.len() == 2)
        .await;
    wait_follow_up(&mock).await;
    call.wait_received(40).await;
    let (_, got) = call.close().await;
    assert!(got.error.is_none(), "{:?}", got.error);

    let (issued, outputs, types) = mock.with(|s| {
        (
            s.function_calls.clone(),
            s.function_outputs.clone(),
            s.client_types(),
        )
    });
    let by_id = |call_id: &str| {
        outputs
            .iter()
            .find(|o| o.call_id == call_id)
            .unwrap_or_else(|| panic!("no output for {call_id}: {outputs:#?}"))
    };
    assert_eq!(
        by_id(&issued[0].call_id).parsed,
        Some(json!({"status": "shipped"}))
    );
    assert_eq!(
        by_id(&issued[1].call_id).parsed,
        Some(json!({"in_stock": 3}))
    );
    assert_eq!(outputs[0].call_id, issued[0].call_id);
    assert!(
        outputs[0].during_response,
        "the first result came mid-response"
    );
    assert!(!outputs[1].during_response);
    let last_output = outputs.iter().map(|o| o.event_index).max().unwrap();
    let creates: Vec<usize> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| *t == "response.create")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(creates.len(), 1, "{types:?}");
    assert!(creates[0] > last_output, "{types:?}");
    assert_no_problems(&mock);
    assert_heard_everything(&mock, &got);
    let summary = daemon.wait_call_end(id).await;
    assert_eq!(field(&summary, "tool_calls"), 2);
    daemon.stop().await;
}

/// The webhook fails with HTTP 500: the model gets an `error` to talk about, and the
/// conversation goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_failure_becomes_an_error_output() {
    let hooks = WebhookServer::start().await;
    hooks.respond("/orders", Reply::Status(500, "database on fire".to_owned()));
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let tools = tool(
        "lookup_order",
        "Find an order by its number.",
        ORDER_PARAMS,
        &hooks.url("/orders"),
        2000,
    );
    let daemon = start(&tools, &mock).await;
    let id = "oai-tool-500";
    let call = connect(&daemon, id).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    mock.script(Script::function_call(
        "lookup_order",
        json!({"order_id": "A42"}),
    ));
    let output = the_output(&mock).await;
    wait_follow_up(&mock).await;
    call.wait_received(40).await;
    let (_, got) = call.close().await;
    assert!(got.error.is_none(), "{:?}", got.error);

    assert_eq!(hooks.requests("/orders").len(), 1, "no retry for the model");
    let parsed = output.parsed.expect("the output is JSON text");
    let error = parsed["error"].as_str().expect("an error field");
    println!("error output: {error}");
    assert!(error.contains("500"), "{error}");
    let after = mock.with(|s| types_after(s, output.event_index));
    assert_eq!(
        after.iter().filter(|t| *t == "response.create").count(),
        1,
        "{after:?}"
    );
    assert_no_problems(&mock);
    assert_heard_everything(&mock, &got);
    daemon.wait_call_end(id).await;
    daemon.stop().await;
}

/// The webhook is slower than the tool's `timeout_ms`: the model gets an error output
/// without waiting for the webhook (which answers only after the test's hang guard),
/// and speaks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_webhook_times_out_and_the_call_goes_on() {
    let hooks = WebhookServer::start().await;
    hooks.respond(
        "/orders",
        Reply::Delayed(
            HANG_GUARD * 2,
            Box::new(Reply::Json(json!({"status": "too late"}))),
        ),
    );
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let tools = tool(
        "lookup_order",
        "Find an order by its number.",
        ORDER_PARAMS,
        &hooks.url("/orders"),
        300,
    );
    let daemon = start(&tools, &mock).await;
    let id = "oai-tool-slow";
    let call = connect(&daemon, id).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    mock.script(Script::function_call(
        "lookup_order",
        json!({"order_id": "A42"}),
    ));
    let output = the_output(&mock).await;
    let parsed = output.parsed.clone().expect("the output is JSON text");
    let error = parsed["error"].as_str().expect("an error field");
    println!("timeout output: {error}");
    assert!(error.contains("300 ms"), "{error}");
    wait_follow_up(&mock).await;
    call.wait_received(40).await;
    let (_, got) = call.close().await;
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_eq!(hooks.requests("/orders").len(), 1);
    assert_no_problems(&mock);
    assert_heard_everything(&mock, &got);
    let summary = daemon.wait_call_end(id).await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    daemon.stop().await;
}

/// The mock itself, driven by a bare WebSocket client: the server's event order for a
/// response that speaks and then calls a function, the tools validation of
/// `session.update` (fed voicebridge's real one, then broken copies), and the protocol
/// errors the real server gives: a second active response, an unknown `call_id`, an
/// output that is not a string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_speaks_the_function_call_protocol() {
    use common::mock_openai::validate_tools;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    use voicebridge::providers::openai::Setup;
    use voicebridge::providers::CallContext;

    let toml = config(&tool(
        "lookup_order",
        "Find an order by its number.",
        ORDER_PARAMS,
        "http://127.0.0.1:9/orders",
        2000,
    ));
    let cfg = voicebridge::config::Config::from_toml_str(
        &toml,
        [("OPENAI_API_KEY".to_owned(), KEY.to_owned())],
    )
    .unwrap();
    let update = Setup::new(
        &cfg.providers.openai,
        cfg.default_route(),
        &CallContext::default(),
    )
    .session_update();
    let session = &update["session"];
    assert_eq!(validate_tools(session), Vec::<String>::new());
    let broken = |f: &dyn Fn(&mut Value)| {
        let mut s = session.clone();
        f(&mut s);
        validate_tools(&s)
    };
    // The Chat Completions shape, a missing description, a bad name, no schema type,
    // a tool_choice naming nothing, tool_choice without tools: each is caught.
    assert!(!broken(&|s| {
        let t = s["tools"][0].clone();
        s["tools"][0] = json!({"type": "function", "function": t});
    })
    .is_empty());
    assert!(!broken(&|s| s["tools"][0]["description"] = json!("")).is_empty());
    assert!(!broken(&|s| s["tools"][0]["name"] = json!("lookup order")).is_empty());
    assert!(!broken(&|s| s["tools"][0]["parameters"] = json!({"properties": {}})).is_empty());
    assert!(
        !broken(&|s| s["tool_choice"] = json!({"type": "function", "name": "nope"})).is_empty()
    );
    assert!(!broken(&|s| {
        s.as_object_mut().unwrap().remove("tools");
    })
    .is_empty());

    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let mut req = mock.url().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    *req.uri_mut() = format!("{}?model=gpt-realtime", mock.url())
        .parse()
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_event(&mut ws).await["type"], "session.created");
    ws.send(Message::text(update.to_string())).await.unwrap();
    let ev = next_event(&mut ws).await;
    assert_eq!(ev["type"], "session.updated");
    assert_eq!(ev["session"]["tools"], session["tools"]);

    mock.script(Script::say_then_call(
        200,
        1,
        "lookup_order",
        json!({"order_id": "A42"}),
    ));
    let mut kinds: Vec<String> = Vec::new();
    let mut done_call = Value::Null;
    let mut response_done = Value::Null;
    loop {
        let ev = next_event(&mut ws).await;
        let kind = ev["type"].as_str().unwrap().to_owned();
        if kind == "response.function_call_arguments.done" {
            done_call = ev.clone();
        }
        if kind == "response.done" {
            response_done = ev.clone();
        }
        // Deltas collapse to one entry per run.
        let is_delta = kind.ends_with(".delta");
        if !(is_delta && kinds.last().is_some_and(|k| k.ends_with(".delta"))) {
            kinds.push(if is_delta {
                "*.delta".into()
            } else {
                kind.clone()
            });
        }
        if kind == "rate_limits.updated" {
            break;
        }
    }
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added",
            "*.delta",
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.output_item.added",
            "conversation.item.added",
            "*.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
            "rate_limits.updated",
        ]
    );
    let call_id = done_call["call_id"].as_str().unwrap().to_owned();
    for key in ["event_id", "response_id", "item_id", "output_index", "name"] {
        assert!(!done_call[key].is_null(), "{key} missing: {done_call}");
    }
    assert_eq!(done_call["arguments"], r#"{"order_id":"A42"}"#);
    assert_eq!(done_call["output_index"], 1);
    let output = response_done["response"]["output"].as_array().unwrap();
    assert_eq!(output.len(), 2);
    assert_eq!(output[1]["type"], "function_call");
    assert_eq!(output[1]["status"], "completed");
    assert_eq!(output[1]["call_id"], call_id.as_str());
    assert!(response_done["response"]["usage"]["total_tokens"].is_u64());

    // Protocol errors, as the server reports them.
    let send = |v: Value| Message::text(v.to_string());
    ws.send(send(
        json!({"type": "conversation.item.create", "event_id": "c1",
        "item": {"type": "function_call_output", "call_id": "call_nope", "output": "{}"}}),
    ))
    .await
    .unwrap();
    let ev = next_event(&mut ws).await;
    assert_eq!(ev["error"]["code"], "invalid_tool_call_id");
    assert_eq!(ev["error"]["event_id"], "c1");
    ws.send(send(json!({"type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": {"ok": true}}})))
        .await
        .unwrap();
    assert_eq!(next_event(&mut ws).await["error"]["code"], "invalid_value");
    mock.script(Script::Respond { ms: 2000, seed: 2 });
    assert_eq!(next_event(&mut ws).await["type"], "response.created");
    ws.send(send(json!({"type": "response.create", "event_id": "c2"})))
        .await
        .unwrap();
    let ev = loop {
        let ev = next_event(&mut ws).await;
        if ev["type"] == "error" {
            break ev;
        }
    };
    assert_eq!(
        ev["error"]["code"],
        "conversation_already_has_active_response"
    );
    assert_eq!(ev["error"]["event_id"], "c2");
    let accepted: Vec<bool> =
        mock.with(|s| s.function_outputs.iter().map(|o| o.accepted).collect());
    assert_eq!(accepted, [false, false]);
    let problems = mock.with(|s| s.problems.clone());
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems[2].contains("response.create while"),
        "{problems:#?}"
    );
    assert_eq!(
        mock.with(|s| s.errors_sent.clone()),
        [
            "invalid_tool_call_id",
            "invalid_value",
            "conversation_already_has_active_response"
        ]
    );
}

async fn next_event<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    loop {
        let msg = tokio::time::timeout(HANG_GUARD, ws.next())
            .await
            .expect("mock event")
            .expect("mock open")
            .expect("mock message");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// `end_call` after a goodbye: its result goes back with no `response.create` (the model
/// has said its last words), the goodbye plays out, then the daemon hangs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_call_result_asks_for_no_response() {
    let mock = MockOpenAi::start(MockOptions::new(MockFormat::Pcmu, KEY)).await;
    let toml = config("").replace(
        "instructions = \"You answer the phone for ACME.\"",
        "instructions = \"You answer the phone for ACME.\"\nend_call = true",
    );
    let url = mock.url();
    let daemon = Daemon::start(
        &toml,
        &[
            ("VOICEBRIDGE__PROVIDERS__OPENAI__URL", url.as_str()),
            ("OPENAI_API_KEY", KEY),
        ],
    )
    .await;
    let id = "oai-tool-end";
    let call = connect(&daemon, id).await;
    mock.wait("session.updated", |s| s.session_updated_sent)
        .await;
    let declared = mock.with(|s| s.session_update.as_ref().unwrap()["session"]["tools"].clone());
    assert_eq!(declared[0]["name"], "end_call");
    mock.script(Script::say_then_call(
        600,
        9,
        "end_call",
        json!({"reason": "the caller said goodbye"}),
    ));
    let summary = daemon.wait_call_end(id).await;
    let got = tokio::time::timeout(HANG_GUARD, call.reader)
        .await
        .expect("the daemon closed the stream")
        .expect("reader task");
    assert_eq!(field(&summary, "end_reason"), "assistant_hangup");
    let output = the_output(&mock).await;
    assert!(output.accepted);
    assert_eq!(output.parsed.as_ref().unwrap()["status"], "ending");
    let types = mock.with(|s| s.client_types());
    assert!(
        !types.iter().any(|t| t == "response.create"),
        "no response after end_call: {types:?}"
    );
    assert_no_problems(&mock);
    let close_at = got
        .events
        .iter()
        .position(|e| matches!(e, common::call::Playback::Close(..)))
        .expect("a Close");
    let frames = got.events[..close_at]
        .iter()
        .filter(|e| matches!(e, common::call::Playback::Audio { .. }))
        .count();
    assert_eq!(
        frames, 30,
        "the 600 ms goodbye played out before the hang-up"
    );
    daemon.stop().await;
}
