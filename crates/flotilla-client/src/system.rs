//! `GET /v1/system` and the raw `/metrics` text, which `flotilla doctor` reads.

use crate::{Client, ClientError, NoBody};
use flotilla_core::wire::SystemInfo;
use reqwest::Method;

impl Client {
    /// `GET /v1/system`: version, uptime, store, resources and security settings of the
    /// control plane, and the caller's role.
    pub async fn system(&self) -> Result<SystemInfo, ClientError> {
        self.call(Method::GET, "/v1/system", NoBody, None).await
    }

    /// `GET /metrics` in the classic Prometheus text format, with this client's key if it has
    /// one. A non-2xx answer is a [`ClientError::Api`].
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(ClientError::Transport)?;
        if !status.is_success() {
            return Err(ClientError::from_response(status.as_u16(), &bytes, None));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}
