#!/usr/bin/env python3
"""Writes the seed corpora to fuzz/seeds/<target>/ (small, committed).

Realistic inputs for each target, shaped like the documented wire messages
(shared docs/protocols/*.md): libFuzzer mutates from these instead of discovering
JSON and URL syntax from nothing. Re-run after changing it; it only (re)writes files.
"""
import base64
import json
import math
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def l16_sine(n, rate=8000, hz=440.0):
    return b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * i / rate))) for i in range(n)
    )


def b64(data):
    return base64.b64encode(data).decode()


def jl(*msgs):
    """One server frame per line (the provider targets split on newlines)."""
    return "\n".join(json.dumps(m, separators=(",", ":")) for m in msgs)


# ---- metadata ---------------------------------------------------------------------------
write("metadata", "full", json.dumps({
    "uuid": "5f0c8a52-11aa-4b7e-9d6c-0a1b2c3d4e5f", "caller_id_number": "+390212345678",
    "destination_number": "100", "codec": "PCMU", "sample_rate": "8k", "channels": "mono",
    "tenant": "acme", "n": 3, "vip": True, "tags": ["a", "b"], "none": None}))
write("metadata", "aliases", '{"call_id":"abc","caller_id":"1001","called":"2000",'
      '"codec":"L16","sample_rate":16000,"channels":"stereo"}')
write("metadata", "bad_values", '{"codec":"opus","sample_rate":"44100","channels":"5.1"}')
write("metadata", "raw", "caller=1001;called=2000")
write("metadata", "array", "[1,2,{\"a\":\"\\u00e9\"}]")
write("metadata", "nested", '{"a":{"b":{"c":[1,2.5e10,-0,"x"]}},"caller_id":""}')

# ---- stream_request ---------------------------------------------------------------------
for i, url in enumerate([
    "/call/5f0c8a52-11aa-4b7e-9d6c-0a1b2c3d4e5f?rate=8000&channels=mono&codec=L16",
    "/sales/abc.def_1?rate=16k&channels=stereo&codec=PCMU&token=s3cr%20t",
    "/?token=abc&tenant=acme",
    "/call/a%20b?rate=11025",
    "/a/b/c",
    "/call/x?sample_rate=48000&codec=pcma&channels=mixed&&=&rate",
    "/%E2%82%AC/%zz?codec=%4C16",
]):
    write("stream_request", f"url{i}", url)

# ---- inbound_frames / pacer (arbitrary-decoded: any bytes are valid) ---------------------
write("inbound_frames", "sine_l16", l16_sine(400))
write("inbound_frames", "ramp", bytes(range(256)) * 3)
write("pacer", "bytes1", bytes((i * 37) % 256 for i in range(600)))
write("pacer", "bytes2", bytes([0, 200, 3, 0, 1, 2, 3, 4, 5] * 40))

# ---- openai_events (first byte: setup flags) --------------------------------------------
delta = b64(l16_sine(240, 24000))
ulaw = b64(bytes([0xFF, 0x7F, 0x00, 0x80] * 40))
openai = jl(
    {"type": "session.created", "event_id": "e1", "session": {"type": "realtime"}},
    {"type": "session.updated", "event_id": "e2", "session": {"type": "realtime"}},
    {"type": "input_audio_buffer.speech_started", "audio_start_ms": 10, "item_id": "u1"},
    {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900, "item_id": "u1"},
    {"type": "input_audio_buffer.committed", "item_id": "u1"},
    {"type": "response.created", "response": {"id": "r1", "status": "in_progress"}},
    {"type": "response.output_audio.delta", "response_id": "r1", "item_id": "i1",
     "output_index": 0, "content_index": 0, "delta": ulaw},
    {"type": "response.output_audio.delta", "response_id": "r1", "item_id": "i1", "delta": delta},
    {"type": "input_audio_buffer.speech_started", "audio_start_ms": 2000, "item_id": "u2"},
    {"type": "response.output_audio.delta", "response_id": "r1", "item_id": "i1", "delta": ulaw},
    {"type": "response.done", "response": {"id": "r1", "status": "cancelled",
     "usage": {"input_tokens": 120, "output_tokens": 40}}},
    {"type": "response.output_audio_transcript.done", "transcript": "Ciao, come posso aiutarla?"},
    {"type": "conversation.item.input_audio_transcription.completed", "item_id": "u1",
     "transcript": "Buongiorno"},
    {"type": "rate_limits.updated", "rate_limits": []},
)
write("openai_events", "turn", b"\x10" + openai.encode())
write("openai_events", "errors", b"\x11" + jl(
    {"type": "session.created"},
    {"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_value",
     "message": "bad", "param": None, "event_id": "vb_session_update"}},
    {"type": "session.updated"},
    {"type": "error", "error": {"type": "invalid_request_error", "code": "session_expired",
     "message": "60 minutes"}},
    {"type": "response.output_audio.delta", "item_id": "i", "delta": "!!notbase64"},
).encode())

# ---- gemini_events ----------------------------------------------------------------------
pcm = b64(l16_sine(240, 24000))
write("gemini_events", "turn", jl(
    {"setupComplete": {}},
    {"serverContent": {"inputTranscription": {"text": "Hi there"}}},
    {"serverContent": {"modelTurn": {"parts": [
        {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": pcm}}, {"text": "x"},
        {"inlineData": {"mimeType": "audio/pcm", "data": pcm}}]}}},
    {"serverContent": {"outputTranscription": {"text": "Hello"}}},
    {"serverContent": {"generationComplete": True}},
    {"serverContent": {"turnComplete": True},
     "usageMetadata": {"promptTokenCount": 10, "responseTokenCount": 4}},
    {"serverContent": {"interrupted": True}},
    {"sessionResumptionUpdate": {"newHandle": "h-123", "resumable": True}},
    {"goAway": {"timeLeft": "50s"}},
    {"goAway": {"timeLeft": "0.250s"}},
    {"toolCall": {"functionCalls": []}}, {"toolCallCancellation": {"ids": ["1"]}},
))
write("gemini_events", "odd", jl(
    {"serverContent": {"modelTurn": {"parts": [
        {"inlineData": {"mimeType": "audio/L16; rate=16000", "data": "AAEC"}}]}}},
    {"goAway": {"timeLeft": "1e3s"}},
    {"serverContent": {"turnComplete": "yes"}},
))

# ---- elevenlabs_events (first byte: watchdog seconds and clock) --------------------------
el = jl(
    {"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": {
        "conversation_id": "conv_1", "agent_output_audio_format": "ulaw_8000",
        "user_input_audio_format": "pcm_16000"}},
    {"type": "audio", "audio_event": {"audio_base_64": ulaw, "event_id": 1}},
    {"type": "agent_response", "agent_response_event": {"agent_response": "Hi, how can I help?"}},
    {"type": "ping", "ping_event": {"event_id": 3, "ping_ms": 45}},
    {"type": "user_transcript", "user_transcription_event": {"user_transcript": "Hello"}},
    {"type": "audio", "audio_event": {"audio_base_64": ulaw, "event_id": "7"}},
    {"type": "interruption", "interruption_event": {"event_id": 7}},
    {"type": "audio", "audio_event": {"audio_base_64": ulaw, "event_id": 7}},
    {"type": "agent_response_correction", "agent_response_correction_event": {
        "original_agent_response": "Sure, the", "corrected_agent_response": "Sure"}},
    {"type": "error", "error_event": {"code": 1008, "message": "no",
                                      "error_type": "override_error"}},
    {"type": "vad_score", "vad_score_event": {"vad_score": 0.9}},
    {"no_type": True},
)
write("elevenlabs_events", "conversation", b"\x03" + el.encode())

# ---- call_client_text (first byte: call rate selector) -----------------------------------
def stream_audio(kind, rate, payload):
    data = {"audioDataType": kind, "audioData": b64(payload)}
    if rate is not None:
        data["sampleRate"] = rate
    return json.dumps({"type": "streamAudio", "data": data})


write("call_client_text", "raw8k", b"\x00" + stream_audio("raw", 8000, l16_sine(160)).encode())
write("call_client_text", "pcmu", b"\x00" + stream_audio("pcmu", 8000, bytes(160)).encode())
write("call_client_text", "pcma16k", b"\x01" + stream_audio("pcma", None, bytes(80)).encode())
write("call_client_text", "odd", b"\x00" + stream_audio("raw", 8000, b"\x01\x02\x03").encode())
write("call_client_text", "clear", b"\x00" + b'{"type":"clearAudio"}')
write("call_client_text", "other", b"\x02" + b'{"type":"transcript","text":"hi"}')
