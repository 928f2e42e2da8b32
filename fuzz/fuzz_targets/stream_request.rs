//! The upgrade request target: path and query come straight from the network.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voicebridge::telephony::freeswitch::{RequestError, StreamRequest};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Split like an HTTP request target: everything after the first '?' is the query.
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*text, None),
    };
    match StreamRequest::parse(path, query) {
        Ok(req) => {
            // Empty segments are trimmed or rejected, and a bare path gets the default.
            assert!(!req.route.is_empty());
            if let Some(id) = &req.call_id {
                assert!(!id.is_empty() && id.len() <= 128, "{id:?}");
                assert!(id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
            }
            if let Some(rate) = req.rate {
                assert!((8000..=48000).contains(&rate) && rate % 8000 == 0, "{rate}");
            }
        }
        // The echoed path is clipped so an attacker cannot make the log line huge.
        Err(RequestError::BadPath(p)) => assert!(p.chars().count() <= 200),
        Err(RequestError::BadCallId) | Err(RequestError::BadQuery { .. }) => {}
    }
});
