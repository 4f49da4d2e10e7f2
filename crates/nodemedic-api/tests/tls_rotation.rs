//! The API's TLS certificate is rotated under a running server, the way kubelet updates a mounted
//! Secret (a new timestamped directory, then the `..data` link swapped in one rename): new
//! connections get the new certificate without a restart, and a rotation that does not load keeps the
//! old one serving with an error in the log.

use nodemedic_api::cert_reload::{Reload, ReloadingCertificate};
use nodemedic_testenv::wait_for;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A directory laid out like a Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..N`.
struct SecretVolume {
    dir: tempfile::TempDir,
    generation: u32,
}

impl SecretVolume {
    fn new() -> anyhow::Result<SecretVolume> {
        Ok(SecretVolume { dir: tempfile::tempdir()?, generation: 0 })
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Writes a new generation and swaps `..data` to it atomically, as kubelet's atomic writer does.
    fn publish(&mut self, cert: &[u8], key: &[u8]) -> anyhow::Result<()> {
        self.generation += 1;
        let root = self.dir.path();
        let generation = format!("..2026_12_03_{:02}", self.generation);
        std::fs::create_dir(root.join(&generation))?;
        std::fs::write(root.join(&generation).join("tls.crt"), cert)?;
        std::fs::write(root.join(&generation).join("tls.key"), key)?;
        std::os::unix::fs::symlink(&generation, root.join("..data_tmp"))?;
        std::fs::rename(root.join("..data_tmp"), root.join("..data"))?;
        for file in ["tls.crt", "tls.key"] {
            if !root.join(file).exists() {
                std::os::unix::fs::symlink(Path::new("..data").join(file), root.join(file))?;
            }
        }
        Ok(())
    }
}

struct Pair {
    cert: String,
    key: String,
}

fn pair() -> anyhow::Result<Pair> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    Ok(Pair { cert: made.cert.pem(), key: made.signing_key.serialize_pem() })
}

/// Serves a one-route router over TLS with `certificate`; returns the URL and a stop switch.
async fn serve(certificate: &Arc<ReloadingCertificate>) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://{}/", listener.local_addr()?);
    let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(nodemedic_api::tls::serve(listener, router, Some(certificate.server_config()?), async {
        let _ = stopped.await;
    }));
    Ok((url, stop))
}

/// Whether a fresh connection from a client that trusts only `pem` completes a request.
async fn trusted_by(url: &str, pem: &str) -> anyhow::Result<bool> {
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()?;
    Ok(client.get(url).send().await.is_ok_and(|r| r.status().is_success()))
}

/// Log lines captured from this test's thread (the runtime is current-thread, so the spawned
/// watch logs here too).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        self.0.lock().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
    fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}

fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

const POLL: Duration = Duration::from_millis(100);

#[tokio::test]
async fn a_rotated_secret_serves_new_connections_with_the_new_certificate_without_a_restart() -> anyhow::Result<()> {
    let (logs, _guard) = capture_logs();
    let (old, new) = (pair()?, pair()?);
    let mut volume = SecretVolume::new()?;
    volume.publish(old.cert.as_bytes(), old.key.as_bytes())?;
    let certificate = ReloadingCertificate::load(&volume.cert(), &volume.key())?;
    let (url, _stop) = serve(&certificate).await?;
    tokio::spawn(certificate.clone().watch(POLL));
    assert!(trusted_by(&url, &old.cert).await?, "the first certificate serves");
    assert!(!trusted_by(&url, &new.cert).await?, "a client trusting only the next certificate is refused before the rotation");

    volume.publish(new.cert.as_bytes(), new.key.as_bytes())?;
    wait_for(Duration::from_secs(10), "the rotated certificate to serve", || async {
        trusted_by(&url, &new.cert).await.ok().filter(|trusted| *trusted)
    })
    .await?;
    assert!(!trusted_by(&url, &old.cert).await?, "the old certificate no longer serves new connections");
    assert_eq!(logs.count("changed on disk"), 1, "{}", logs.text());
    assert_eq!(certificate.reload()?, Reload::Unchanged, "the same files are not loaded again");
    Ok(())
}

#[tokio::test]
async fn a_rotation_that_does_not_load_keeps_the_old_certificate_serving_and_logs_the_error_once() -> anyhow::Result<()> {
    let (logs, _guard) = capture_logs();
    let (old, other, next) = (pair()?, pair()?, pair()?);
    let mut volume = SecretVolume::new()?;
    volume.publish(old.cert.as_bytes(), old.key.as_bytes())?;
    let certificate = ReloadingCertificate::load(&volume.cert(), &volume.key())?;
    let (url, _stop) = serve(&certificate).await?;
    tokio::spawn(certificate.clone().watch(POLL));

    let truncated = &next.cert.as_bytes()[..next.cert.len() / 2];
    let not_der = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
    let bad: [(&str, &[u8], &[u8]); 5] = [
        ("a truncated certificate", truncated, next.key.as_bytes()),
        ("PEM armour around bytes that are no certificate", not_der.as_bytes(), next.key.as_bytes()),
        ("an empty certificate file", b"", next.key.as_bytes()),
        ("a key that belongs to another certificate", next.cert.as_bytes(), other.key.as_bytes()),
        ("a key file that is not PEM", next.cert.as_bytes(), &[0xff, 0xfe, 0x00, 0x80]),
    ];
    for (round, (what, cert, key)) in bad.into_iter().enumerate() {
        volume.publish(cert, key)?;
        assert!(certificate.reload().is_err(), "{what} loaded");
        wait_for(Duration::from_secs(10), "the error in the log", || async { (logs.count("does not load") == round + 1).then_some(()) })
            .await
            .map_err(|e| anyhow::anyhow!("{what}: {e}\n{}", logs.text()))?;
        // Several polls see the same bad files; the error is logged once.
        tokio::time::sleep(POLL * 5).await;
        assert_eq!(logs.count("does not load"), round + 1, "{what} logged more than once:\n{}", logs.text());
        assert!(trusted_by(&url, &old.cert).await?, "after {what}, the old certificate still serves");
    }

    volume.publish(next.cert.as_bytes(), next.key.as_bytes())?;
    wait_for(Duration::from_secs(10), "a good pair after the bad ones to serve", || async {
        trusted_by(&url, &next.cert).await.ok().filter(|trusted| *trusted)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_server_does_not_start_without_a_certificate_that_loads() -> anyhow::Result<()> {
    let volume = SecretVolume::new()?;
    let missing = ReloadingCertificate::load(&volume.cert(), &volume.key());
    assert!(missing.is_err_and(|e| e.to_string().contains("tls.crt")), "a missing file names itself");
    Ok(())
}

/// A self-signed pair valid until `days` from now.
fn pair_ending_in(days: i64) -> anyhow::Result<(Pair, jiff::civil::Date)> {
    let end = (jiff::Zoned::now() + jiff::Span::new().days(days)).date();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    params.not_after = rcgen::date_time_ymd(i32::from(end.year()), end.month() as u8, end.day() as u8);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((Pair { cert: cert.pem(), key: key.serialize_pem() }, end))
}

#[tokio::test]
async fn a_certificate_near_its_end_is_warned_about_when_it_loads_and_a_renewed_one_is_not() -> anyhow::Result<()> {
    let (logs, _guard) = capture_logs();
    let (ending, end) = pair_ending_in(10)?;
    let (renewed, renewed_end) = pair_ending_in(365)?;
    let mut volume = SecretVolume::new()?;
    volume.publish(ending.cert.as_bytes(), ending.key.as_bytes())?;
    let certificate = ReloadingCertificate::load(&volume.cert(), &volume.key())?;
    assert_eq!(certificate.expires_at().map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date()), Some(end));
    tokio::spawn(certificate.clone().watch(POLL));
    wait_for(Duration::from_secs(5), "the expiry warning", || async { (logs.count("ends within 30 days") == 1).then_some(()) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs.text()))?;

    volume.publish(renewed.cert.as_bytes(), renewed.key.as_bytes())?;
    wait_for(Duration::from_secs(5), "the renewal to load", || async {
        (certificate.expires_at().map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date()) == Some(renewed_end)).then_some(())
    })
    .await?;
    tokio::time::sleep(POLL * 5).await;
    assert_eq!(logs.count("ends within 30 days"), 1, "a renewed certificate is not warned about:\n{}", logs.text());
    Ok(())
}
