//! Redfish: `POST <system>/Actions/ComputerSystem.Reset` with `ForceOff` or `On`, and `PowerState`
//! read from `GET <system>`. HTTPS is verified against the BMC's CA bundle (or the system roots)
//! unless the BMC is explicitly marked `insecureSkipTlsVerify`.

use super::{BmcAddress, BmcError, BmcTarget, Credentials, PowerControl, PowerState};
use std::time::Duration;

/// How long one Redfish request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Redfish {
    address: BmcAddress,
    system: String,
    credentials: Credentials,
    http: reqwest::Client,
}

impl Redfish {
    pub fn new(target: &BmcTarget, credentials: Credentials) -> Result<Redfish, BmcError> {
        let BmcAddress::Redfish(system) = &target.address else {
            return Err(BmcError::new(&target.address, "not a Redfish BMC"));
        };
        let fail = |m: String| BmcError::new(&target.address, m);
        let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).connect_timeout(REQUEST_TIMEOUT);
        if let Some(path) = &target.ca_bundle {
            let pem = std::fs::read(path).map_err(|e| fail(format!("reading the CA bundle {} failed: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| fail(format!("the CA bundle {} is not PEM certificates: {e}", path.display())))?;
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if target.insecure_skip_tls_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| fail(format!("building the HTTP client failed: {e}")))?;
        Ok(Redfish { address: target.address.clone(), system: system.trim_end_matches('/').to_string(), credentials, http })
    }

    /// The error for an answer that is not a success: refused credentials are named as such.
    async fn refusal(&self, what: &str, response: reqwest::Response) -> BmcError {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let body: String = body.trim().chars().take(300).collect();
        let message = match status.as_u16() {
            401 | 403 => format!("{what}: refused the credentials of user {} (HTTP {status}): {body}", self.credentials.username),
            _ => format!("{what}: HTTP {status}: {body}"),
        };
        BmcError::new(&self.address, message)
    }

    fn unreachable(&self, what: &str, e: &reqwest::Error) -> BmcError {
        // The source chain carries the cause (connection refused, certificate not trusted).
        let mut message = format!("{what}: {e}");
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        BmcError::new(&self.address, message)
    }
}

impl PowerControl for Redfish {
    fn address(&self) -> &BmcAddress {
        &self.address
    }

    async fn switch(&self, state: PowerState) -> Result<(), BmcError> {
        let reset_type = match state {
            PowerState::Off => "ForceOff",
            PowerState::On => "On",
        };
        let what = format!("ComputerSystem.Reset {reset_type}");
        let response = self
            .http
            .post(format!("{}/Actions/ComputerSystem.Reset", self.system))
            .basic_auth(&self.credentials.username, Some(&self.credentials.password))
            .json(&serde_json::json!({"ResetType": reset_type}))
            .send()
            .await
            .map_err(|e| self.unreachable(&what, &e))?;
        if !response.status().is_success() {
            return Err(self.refusal(&what, response).await);
        }
        Ok(())
    }

    async fn state(&self) -> Result<PowerState, BmcError> {
        let what = "reading PowerState";
        let response = self
            .http
            .get(&self.system)
            .basic_auth(&self.credentials.username, Some(&self.credentials.password))
            .send()
            .await
            .map_err(|e| self.unreachable(what, &e))?;
        if !response.status().is_success() {
            return Err(self.refusal(what, response).await);
        }
        let text = response.text().await.map_err(|e| BmcError::new(&self.address, format!("{what}: reading the answer: {e}")))?;
        // Strict: `{"PowerState": "On", "PowerState": "Off"}` confirms nothing.
        let system: serde_json::Value = nodemedic_core::input::from_json_str(&text)
            .map_err(|e| BmcError::new(&self.address, format!("{what}: the answer is not JSON: {e}")))?;
        match system.get("PowerState").and_then(|s| s.as_str()) {
            Some("On") => Ok(PowerState::On),
            Some("Off") => Ok(PowerState::Off),
            other => Err(BmcError::new(&self.address, format!("{what}: PowerState is {other:?}"))),
        }
    }
}
