//! The byte stream under a provider's WebSocket: TCP, with TLS for `wss://`.
//!
//! Ours rather than tokio-tungstenite's `MaybeTlsStream` for two reasons, both measured:
//! - its TLS variant is inline, so every provider socket is 1.1 KB bigger than a plain
//!   one even when it is plain (`ws://` to a backend on the same host or network, and
//!   every load test); here the TLS stream is boxed, so a plain socket is 48 bytes and
//!   a TLS one pays for TLS only;
//! - without a connector of ours it reads and parses the system's root certificates and
//!   builds a TLS setup for every connection (82 ms in a debug build here); here that is
//!   done once per process ([`tls_config`]).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::handshake::client::Request;

/// One provider connection's transport.
#[derive(Debug)]
pub enum ProviderStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why the transport could not be opened (before any WebSocket byte).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the URL names no host")]
    NoHost,
    #[error("unsupported URL scheme (use ws:// or wss://)")]
    Scheme,
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("no usable system root certificates for wss:// (install ca-certificates or set SSL_CERT_FILE)")]
    NoRoots,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// TCP connect (no Nagle: audio is small and latency-bound), then TLS for `wss://`.
pub async fn open(request: &Request) -> Result<ProviderStream, StreamError> {
    let uri = request.uri();
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(StreamError::Scheme),
    };
    let host = uri.host().ok_or(StreamError::NoHost)?;
    // rustls and the resolver want IPv6 literals without their brackets.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    if !tls {
        return Ok(ProviderStream::Plain(tcp));
    }
    let config = tls_config().ok_or(StreamError::NoRoots)?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| StreamError::ServerName(host.to_owned()))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(ProviderStream::Tls(Box::new(stream)))
}

/// The TLS client setup every provider connection shares, built on first use from the
/// system's root certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` are honoured). `None`:
/// no usable root, or rustls refused the setup (logged once).
pub(crate) fn tls_config() -> Option<Arc<rustls::ClientConfig>> {
    static TLS: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    TLS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            tracing::warn!(
                ignored,
                errors = loaded.errors.len(),
                "no usable system root certificates for wss:// providers"
            );
            return None;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        match rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
        {
            Ok(builder) => Some(Arc::new(
                builder.with_root_certificates(roots).with_no_client_auth(),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "TLS setup for wss:// providers refused");
                None
            }
        }
    })
    .clone()
}

impl AsyncRead for ProviderStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProviderStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ProviderStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ProviderStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ProviderStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ProviderStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ProviderStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ProviderStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ProviderStream::Plain(s) => s.is_write_vectored(),
            ProviderStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProviderStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ProviderStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProviderStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ProviderStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wss:// connection gets the same TLS setup: the system's roots are read once
    /// per process, not once per call.
    #[test]
    fn the_tls_setup_is_built_once_and_shared() {
        let started = std::time::Instant::now();
        let first = tls_config();
        let built = started.elapsed();
        let started = std::time::Instant::now();
        let second = tls_config();
        eprintln!(
            "TLS setup: first {built:?}, then {:?} (roots {})",
            started.elapsed(),
            if first.is_some() { "found" } else { "missing" }
        );
        match (first, second) {
            (Some(a), Some(b)) => assert!(Arc::ptr_eq(&a, &b), "one setup for every call"),
            (None, None) => {} // No system roots on this machine.
            _ => panic!("the TLS setup changed between two connections"),
        }
    }

    /// A plain provider socket costs a TCP stream, not a TLS session.
    #[test]
    fn a_plain_socket_does_not_reserve_tls_state() {
        let size = std::mem::size_of::<ProviderStream>();
        assert!(size <= 64, "{size} bytes");
    }
}
