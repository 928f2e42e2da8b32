//! The carriers' TLS front end as DEPLOY.md shows it ("Twilio and Telnyx: TLS in
//! front"): HAProxy (Debian's package) terminating TLS with a certificate made here for
//! the test, passing only `/twilio` and `/telnyx` on to the real `voicebridge` binary on
//! loopback. A Twilio-style client (`common::fake_twilio`) over `wss://`, trusting only
//! the test CA, completes an echo call signed for `[twilio] public_url`; an unsigned
//! stream, one signed for the backend's own URL and another path are refused.
//!
//! SKIPPED (printed) when `haproxy` is not installed; CI installs it.

mod common;

use std::process::Stdio;
use std::sync::Arc;

use common::daemon::{field, message, Daemon, HANG_GUARD};
use common::fake_twilio::{FakeTwilio, Refused, TwilioOptions};
use voicebridge::audio::g711;
use voicebridge::audio::signal::snr_db_within;

const TWILIO_TOKEN: &str = "twilio-auth-token-0123456789abcdef";

/// DEPLOY.md's HAProxy front end, with the test's port and certificate path and the
/// daemon's address in place of `:443`, `/etc/haproxy/certs/…` and `127.0.0.1:9090`.
fn haproxy_config(front: u16, pem: &std::path::Path, daemon: std::net::SocketAddr) -> String {
    format!(
        r#"frontend carriers
    mode http
    bind 127.0.0.1:{front} ssl crt {pem} alpn http/1.1
    timeout client 30s
    http-request deny unless {{ path_beg /twilio /telnyx }}
    default_backend voicebridge

backend voicebridge
    mode http
    timeout connect 2s
    timeout server 30s
    timeout tunnel 2h
    server vb1 {daemon}
"#,
        pem = pem.display()
    )
}

/// A CA and a `localhost` certificate signed by it: the CA's DER (for the client) and
/// the certificate followed by its key in PEM (HAProxy's `crt` file).
fn certificates() -> (rustls::pki_types::CertificateDer<'static>, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "voicebridge test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        ca_cert.der().clone(),
        format!("{}{}", cert.pem(), key.serialize_pem()),
    )
}

/// A client that trusts only the test CA (not the system roots).
fn client_tls(ca: rustls::pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

/// `X-Twilio-Signature` as Twilio computes it, independently of the daemon's code:
/// Base64(HMAC-SHA1(auth token, URL)).
fn twilio_signature(token: &str, url: &str) -> String {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(url.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn signed(url: &str) -> TwilioOptions {
    let mut o = TwilioOptions::twilio("call");
    o.headers.push((
        "X-Twilio-Signature".into(),
        twilio_signature(TWILIO_TOKEN, url),
    ));
    o
}

fn ulaw(samples: &[i16]) -> Vec<u8> {
    let mut out = Vec::new();
    g711::ulaw_encode(samples, &mut out);
    out
}

fn unulaw(bytes: &[u8]) -> Vec<i16> {
    let mut out = Vec::new();
    g711::ulaw_decode(bytes, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_over_wss_through_haproxy() {
    if std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: haproxy is not installed (apt-get install haproxy; .ci/run does it)");
        return;
    }
    let front = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let public = format!("wss://localhost:{front}");
    let toml = format!(
        r#"
[freeswitch]
playback_lead_ms = 60

[call]
provider = "echo"

[providers.echo]
mode = "stream"
delay_ms = 200
sample_rate = 24000

[twilio]
auth_token = "{TWILIO_TOKEN}"
public_url = "{public}"
"#
    );
    let daemon = Daemon::start(&toml, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, pem) = certificates();
    let pem_path = dir.path().join("vb.example.com.pem");
    std::fs::write(&pem_path, pem).unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(front, &pem_path, daemon.addr)).unwrap();
    let check = std::process::Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut haproxy = tokio::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let tls = client_tls(ca);
    let url = format!("{public}/twilio/call");

    // HAProxy may not be listening yet: a refused TCP connect is retried on the next
    // tick until its socket takes one (what it accepts early waits in the backlog).
    let mut retry = tokio::time::interval(std::time::Duration::from_millis(20));
    let listening = async {
        while tokio::net::TcpStream::connect(("127.0.0.1", front))
            .await
            .is_err()
        {
            retry.tick().await;
        }
    };
    tokio::time::timeout(HANG_GUARD, listening)
        .await
        .expect("HAProxy never listened");
    let fake = FakeTwilio::connect_tls(&public, signed(&url), tls.clone())
        .await
        .expect("a signed stream over wss:// is accepted");
    let caller = common::call::test_signal(8000, 3.0, 7);
    let mut sent = ulaw(&caller);
    sent.extend(ulaw(&vec![0i16; 4000]));
    fake.send_paced(&sent).await;
    let expected = caller.len() + 1600;
    fake.wait("the echo played", |s| s.played.len() >= expected)
        .await;
    let fake = fake.finish().await;
    let (played, problems) = fake.with(|s| (s.played.clone(), s.problems.clone()));
    assert!(problems.is_empty(), "{problems:?}");
    let back = unulaw(&played);
    let snr = snr_db_within(&caller, &back[1600..], 80);
    println!("SNR twilio echo over wss:// through HAProxy: {snr:.1} dB");
    assert!(snr > 30.0, "SNR {snr:.1} dB");
    let summary = daemon.wait_log(|l| message(l) == "call ended").await;
    assert_eq!(field(&summary, "end_reason"), "freeswitch_closed");
    assert_eq!(field(&summary, "frames_dropped"), 0);

    let refused = |opts: TwilioOptions| {
        let (public, tls) = (public.clone(), tls.clone());
        async move {
            FakeTwilio::connect_tls(&public, opts, tls)
                .await
                .err()
                .map(|Refused { status }| status)
        }
    };
    assert_eq!(
        refused(TwilioOptions::twilio("call")).await,
        Some(401),
        "unsigned"
    );
    assert_eq!(
        refused(signed(&format!("ws://{}/twilio/call", daemon.addr))).await,
        Some(403),
        "signed for the backend's URL, not the public one"
    );
    daemon
        .wait_log(|l| message(l) == "upgrade rejected" && field(l, "status") == 403)
        .await;
    // HAProxy passes on only the carrier paths.
    let mut other = signed(&url);
    other.path = "/asterisk/call".to_owned();
    assert_eq!(refused(other).await, Some(403), "a non-carrier path");
    let rejected = daemon
        .logs()
        .iter()
        .filter(|l| message(l) == "upgrade rejected")
        .count();
    assert_eq!(
        rejected, 2,
        "the non-carrier path never reached voicebridge"
    );

    let out = daemon.output();
    assert!(!out.contains(TWILIO_TOKEN), "the auth token in the log");
    haproxy.kill().await.unwrap();
    daemon.stop().await;
}
