//! Certificates for a throwaway control plane: a CA, the apiserver's serving certificate, an admin
//! client certificate (`system:masters`) and the service-account signing key pair.

use crate::{TestEnvError, io};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::Path;

pub(crate) struct Pki {
    ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
}

fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

impl Pki {
    /// Generates everything and writes the files kube-apiserver reads into `dir`.
    pub(crate) fn generate(dir: &Path) -> Result<Pki, TestEnvError> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "nodemedic-testenv-ca");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "10.96.0.1".into(),
        ])?;
        serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &issuer)?;

        let admin_key = KeyPair::generate()?;
        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin.distinguished_name.push(DnType::CommonName, "nodemedic-admin");
        admin.distinguished_name.push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &issuer)?;

        let sa_key = KeyPair::generate()?;
        let files = [
            ("ca.crt", ca_cert.pem()),
            ("serving.crt", serving_cert.pem()),
            ("serving.key", serving_key.serialize_pem()),
            ("sa.key", sa_key.serialize_pem()),
            ("sa.pub", sa_key.public_key_pem()),
        ];
        for (name, pem) in files {
            std::fs::write(dir.join(name), pem).map_err(io(format!("writing {name}")))?;
        }
        Ok(Pki { ca_pem: ca_cert.pem(), admin_cert_pem: admin_cert.pem(), admin_key_pem: admin_key.serialize_pem() })
    }

    /// An admin kubeconfig (JSON, which kubectl and kube-rs read as YAML).
    pub(crate) fn kubeconfig(&self, server: &str) -> String {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "nodemedic", "cluster": {"server": server, "certificate-authority-data": b64(self.ca_pem.as_bytes())}}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": b64(self.admin_cert_pem.as_bytes()),
                "client-key-data": b64(self.admin_key_pem.as_bytes()),
            }}],
            "contexts": [{"name": "nodemedic", "context": {"cluster": "nodemedic", "user": "admin"}}],
            "current-context": "nodemedic",
        })
        .to_string()
    }

    pub(crate) async fn client(&self, server: &str) -> Result<Client, TestEnvError> {
        let kc: Kubeconfig = serde_json::from_str(&self.kubeconfig(server)).map_err(|e| TestEnvError::Kubeconfig(e.to_string()))?;
        let mut config =
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| TestEnvError::Kubeconfig(e.to_string()))?;
        // Tests must see the API server's answers as they are: kube-rs would otherwise retry a 429
        // (an Eviction refused by a PodDisruptionBudget) for minutes.
        config.default_retry = false;
        Ok(Client::try_from(config)?)
    }
}
