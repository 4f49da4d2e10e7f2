//! The API's serving certificate, re-read from its files while the server runs.
//!
//! A certificate mounted from a Secret changes under a running pod: kubelet swaps the files when the
//! Secret is updated (cert-manager renewing it, or an operator replacing the chart's generated one).
//! [`ReloadingCertificate`] is rustls' certificate resolver: every handshake gets the pair loaded
//! last, and [`ReloadingCertificate::watch`] compares the files with what is served every few seconds.
//! A changed pair is parsed and checked (the key must belong to the certificate) before it replaces
//! the served one; a pair that does not load (half written, corrupt, mismatched) is logged as an error
//! once and the previous certificate keeps serving, so a bad rotation never takes the API down.
//! A certificate within [`EXPIRY_WARNING`] of its end (or past it) is logged as a warning when it
//! loads and once a day after, so a renewal that never comes is noticed before clients refuse it.

use crate::tls::TlsError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The bytes of the two files, to tell a rotation from an unchanged pair without parsing.
#[derive(Clone, PartialEq, Eq)]
struct PemFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// How long before the certificate's end the watch starts warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// The end of the leaf certificate's validity (`notAfter`), when it parses as X.509.
pub fn not_after(key: &CertifiedKey) -> Option<jiff::Timestamp> {
    let leaf = key.end_entity_cert().ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    jiff::Timestamp::from_second(parsed.validity().not_after.timestamp()).ok()
}

/// What [`ReloadingCertificate::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files hold what is served already.
    Unchanged,
    /// A new pair loaded and now serves.
    Replaced,
}

/// A certificate resolver that serves the pair read last from `cert` and `key`.
pub struct ReloadingCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    served: RwLock<(PemFiles, Arc<CertifiedKey>)>,
    /// The last reload's error, so one bad rotation is logged once, not every poll.
    rejected: Mutex<Option<String>>,
}

impl std::fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCertificate").field("cert", &self.cert_path).field("key", &self.key_path).finish()
    }
}

impl ReloadingCertificate {
    /// Loads the pair; a server must not start without a certificate, so any error is returned.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ReloadingCertificate>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = read_files(cert, key)?;
        let certified = certified_key(&files, cert, key, &provider)?;
        Ok(Arc::new(ReloadingCertificate {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            provider,
            served: RwLock::new((files, certified)),
            rejected: Mutex::new(None),
        }))
    }

    /// A server configuration whose handshakes ask this resolver for the certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Re-reads the files; a pair that differs from the served one replaces it once it loads. On an
    /// error the served certificate stays.
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let files = read_files(&self.cert_path, &self.key_path)?;
        if self.served.read().is_ok_and(|served| served.0 == files) {
            return Ok(Reload::Unchanged);
        }
        let certified = certified_key(&files, &self.cert_path, &self.key_path, &self.provider)?;
        if let Ok(mut served) = self.served.write() {
            *served = (files, certified);
        }
        Ok(Reload::Replaced)
    }

    /// When the served certificate ends (`notAfter`).
    pub fn expires_at(&self) -> Option<jiff::Timestamp> {
        self.current().as_deref().and_then(not_after)
    }

    /// Calls [`Self::reload`] every `every`, forever, logging each rotation and each new failure,
    /// and warning about a certificate near its end when it loads and once a day.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        const DAY: Duration = Duration::from_secs(86_400);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        self.warn_if_ending();
        let mut warned = tokio::time::Instant::now();
        loop {
            ticks.tick().await;
            if self.reload_and_log() == Some(Reload::Replaced) || warned.elapsed() >= DAY {
                self.warn_if_ending();
                warned = tokio::time::Instant::now();
            }
        }
    }

    fn warn_if_ending(&self) {
        let Some(end) = self.expires_at() else { return };
        let left = end.duration_since(jiff::Timestamp::now());
        if left < jiff::SignedDuration::try_from(EXPIRY_WARNING).unwrap_or(jiff::SignedDuration::MAX) {
            tracing::warn!(cert = %self.cert_path.display(), not_after = %end, "the API's TLS certificate ends within 30 days (or has ended); renew it");
        }
    }

    fn reload_and_log(&self) -> Option<Reload> {
        let outcome = self.reload();
        let error = outcome.as_ref().err().map(ToString::to_string);
        let repeated = self.rejected.lock().map(|mut last| std::mem::replace(&mut *last, error.clone()) == error).unwrap_or(false);
        match &outcome {
            Ok(Reload::Unchanged) => {}
            Ok(Reload::Replaced) => {
                let not_after = self.expires_at().map(|t| t.to_string()).unwrap_or_default();
                tracing::info!(cert = %self.cert_path.display(), %not_after, "the API's TLS certificate changed on disk; new connections get the new one");
            }
            Err(error) if !repeated => {
                tracing::error!(%error, "the API's TLS certificate on disk does not load; the previous certificate keeps serving");
            }
            Err(_) => {}
        }
        outcome.ok()
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.served.read().ok().map(|served| served.1.clone())
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

fn read_files(cert: &Path, key: &Path) -> Result<PemFiles, TlsError> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| TlsError::Pem { path: path.display().to_string(), message: e.to_string() });
    Ok(PemFiles { cert: read(cert)?, key: read(key)? })
}

/// The chain and key from PEM bytes, the key checked against the certificate's public key.
fn certified_key(files: &PemFiles, cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let pem = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Pem { path: path.display().to_string(), message: e.to_string() };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&files.cert).collect::<Result<_, _>>().map_err(|e| pem(cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.display().to_string() });
    }
    let private = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| pem(key, e))?;
    let certified = CertifiedKey::from_der(chain, private, provider)?;
    Ok(Arc::new(certified))
}
