//! The `code` label of `voicebridge_provider_errors_total`: a fixed set per provider
//! plus `other`. A provider's error code is peer-chosen text; used as a label value
//! as it came, one call sending 20 000 distinct codes made 20 000 series (each kept
//! for the life of the process). The code as received still goes into the log line.

/// Codes voicebridge itself gives any provider's failures (connect, upgrade status,
/// setup timeout, Close codes during setup).
const COMMON: &[&str] = &[
    "connect",
    "setup_timeout",
    "closed",
    "unknown",
    "http_400",
    "http_401",
    "http_403",
    "http_404",
    "http_408",
    "http_429",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "close_1000",
    "close_1001",
    "close_1002",
    "close_1003",
    "close_1006",
    "close_1007",
    "close_1008",
    "close_1009",
    "close_1011",
    "close_1013",
];

/// OpenAI Realtime's `error.code` / `error.type` values worth telling apart.
const OPENAI: &[&str] = &[
    "invalid_request_error",
    "server_error",
    "invalid_api_key",
    "insufficient_quota",
    "rate_limit_exceeded",
    "model_not_found",
    "session_expired",
    "invalid_value",
    "unknown_parameter",
    "missing_required_parameter",
    "decimal_above_max_value",
    "decimal_below_min_value",
    "integer_above_max_value",
    "integer_below_min_value",
    "string_above_max_length",
    "item_truncate_invalid",
    "input_audio_buffer_commit_empty",
    "conversation_already_has_active_response",
    "response_cancel_not_active",
];

/// ElevenLabs `error_event.error_type` (or its numeric `code`), plus our own.
const ELEVENLABS: &[&str] = &[
    "signed_url",
    "audio_format",
    "override_error",
    "quota_exceeded",
    "policy_violation",
    "internal_error",
    "invalid_message",
    "1002",
    "1008",
    "1011",
];

/// The label for `code` from `provider`: the code itself when it is in the provider's
/// set, else `other`.
pub fn label(provider: &str, code: &str) -> &'static str {
    let own: &[&str] = match provider {
        "openai" => OPENAI,
        "elevenlabs" => ELEVENLABS,
        _ => &[],
    };
    COMMON
        .iter()
        .chain(own)
        .find(|known| **known == code)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_keep_their_name() {
        assert_eq!(label("openai", "invalid_api_key"), "invalid_api_key");
        assert_eq!(label("openai", "http_401"), "http_401");
        assert_eq!(label("gemini", "close_1008"), "close_1008");
        assert_eq!(label("elevenlabs", "quota_exceeded"), "quota_exceeded");
    }

    #[test]
    fn anything_else_is_other() {
        assert_eq!(label("openai", "made_up_code_17"), "other");
        assert_eq!(label("gemini", "invalid_api_key"), "other", "not Gemini's");
        assert_eq!(label("openai", "http_418"), "other");
        assert_eq!(label("openai", ""), "other");
        let distinct: std::collections::HashSet<&str> = (0..20_000)
            .map(|i| label("openai", &format!("code_{i}")))
            .collect();
        assert_eq!(distinct.len(), 1, "20 000 codes, one series");
    }
}
