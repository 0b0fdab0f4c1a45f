//! TLS of the log endpoint: a self-signed certificate made at start for the address the
//! agent publishes (clients pin it: it is in the BatchNode's `status.logEndpoint`, which
//! only this node may write under the chart's admission policy), and the TLS listener
//! axum serves on (handshakes side by side).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server configuration with a new self-signed certificate for `host` (a name or an
/// address, brackets allowed), and that certificate as PEM.
pub fn server_config(host: &str) -> Result<(Arc<rustls::ServerConfig>, String), String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec![host.to_string()]).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der())),
        )
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), cert.pem()))
}

/// A client configuration that trusts only `certificate_pem` (the endpoint's pinned
/// certificate).
pub fn client_config(certificate_pem: &str) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(certificate_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("the endpoint's certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("the endpoint's certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS handshake in progress: its outcome (or timeout) and the peer.
type Handshake = futures::future::BoxFuture<
    'static,
    (
        Result<std::io::Result<TlsStream<TcpStream>>, tokio::time::error::Elapsed>,
        std::net::SocketAddr,
    ),
>;

/// Handshakes in progress at once; a connection beyond it is closed at once.
const MAX_HANDSHAKES: usize = 64;

/// TCP connections after their TLS handshake. Handshakes run side by side, so a client
/// that connects and sends nothing delays nobody else (it is dropped after
/// [`HANDSHAKE_TIMEOUT`]).
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: futures::stream::FuturesUnordered<Handshake>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    // Cancel-safe: an accepted connection is pushed without an await in between, and
    // handshakes in progress live in `self`.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use futures::StreamExt;
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if self.handshakes.len() >= MAX_HANDSHAKES {
                            tracing::debug!(%peer, "log endpoint: too many TLS handshakes in progress; connection closed");
                            continue;
                        }
                        let acceptor = self.acceptor.clone();
                        self.handshakes.push(Box::pin(async move {
                            let r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                            (r, peer)
                        }));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "log endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some((r, peer)) = self.handshakes.next(), if !self.handshakes.is_empty() => match r {
                    Ok(Ok(tls)) => return (tls, peer),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "log endpoint: TLS handshake failed");
                    }
                    Err(_) => tracing::debug!(%peer, "log endpoint: TLS handshake timed out"),
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves `app` over TLS on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, app: axum::Router) {
    let listener = TlsListener {
        tcp: listener,
        acceptor: TlsAcceptor::from(tls),
        handshakes: futures::stream::FuturesUnordered::new(),
    };
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the log endpoint stopped");
    }
}
