//! The vault: `/v1/secrets` and `/v1/vault/rewrap`.
//!
//! Values pass through as plain strings here; callers that keep them (the CLI) should hold them
//! only as long as needed. [`SecretValue`]'s `Debug` redacts the value.

use crate::{Client, ClientError, Json, NoBody};
use flotilla_core::wire::{
    ErrorDetail, PutSecret, RewrapReport, RotateSecret, SecretDeleted, SecretList, SecretValue,
    SecretWritten,
};
use reqwest::Method;

/// `?tenant=` when acting on another tenant.
fn tenant_query(tenant: Option<&str>) -> Vec<(&'static str, String)> {
    tenant
        .map(|t| ("tenant", t.to_owned()))
        .into_iter()
        .collect()
}

/// `/v1/secrets/{path}`, refusing paths a URL would rewrite: `.` and `..` segments are resolved
/// away by URL parsing (even percent-encoded), so `a/../b` would silently address `b`.
fn secret_url(path: &str) -> Result<String, ClientError> {
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err(ClientError::Api {
            status: 400,
            error: ErrorDetail {
                code: "invalid_field".to_owned(),
                message: "a secret path has no `.` or `..` segment".to_owned(),
                field: Some("path".to_owned()),
                request_id: None,
            },
        });
    }
    Ok(format!("/v1/secrets/{path}"))
}

impl Client {
    /// `PUT /v1/secrets/{path}`: writes a new version.
    pub async fn put_secret(
        &self,
        path: &str,
        value: &str,
        tenant: Option<&str>,
    ) -> Result<SecretWritten, ClientError> {
        let body = PutSecret {
            value: value.to_owned(),
        };
        self.call_with(
            Method::PUT,
            &secret_url(path)?,
            &tenant_query(tenant),
            Json(&body),
            None,
        )
        .await
    }

    /// `GET /v1/secrets/{path}`: the newest version's value, or `version`'s.
    pub async fn get_secret(
        &self,
        path: &str,
        version: Option<u32>,
        tenant: Option<&str>,
    ) -> Result<SecretValue, ClientError> {
        let mut query = tenant_query(tenant);
        if let Some(version) = version {
            query.push(("version", version.to_string()));
        }
        self.call_with(Method::GET, &secret_url(path)?, &query, NoBody, None)
            .await
    }

    /// `GET /v1/secrets`: paths, versions and times (never values).
    pub async fn list_secrets(
        &self,
        prefix: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<SecretList, ClientError> {
        let mut query = tenant_query(tenant);
        if let Some(prefix) = prefix {
            query.push(("prefix", prefix.to_owned()));
        }
        self.call_with(Method::GET, "/v1/secrets", &query, NoBody, None)
            .await
    }

    /// `POST /v1/secrets/{path}/rotate`: a new version with a supplied or generated value.
    pub async fn rotate_secret(
        &self,
        path: &str,
        rotation: &RotateSecret,
        tenant: Option<&str>,
    ) -> Result<SecretWritten, ClientError> {
        let url = format!("{}/rotate", secret_url(path)?);
        self.call_with(
            Method::POST,
            &url,
            &tenant_query(tenant),
            Json(rotation),
            None,
        )
        .await
    }

    /// `DELETE /v1/secrets/{path}`: every version.
    pub async fn delete_secret(
        &self,
        path: &str,
        tenant: Option<&str>,
    ) -> Result<SecretDeleted, ClientError> {
        self.call_with(
            Method::DELETE,
            &secret_url(path)?,
            &tenant_query(tenant),
            NoBody,
            None,
        )
        .await
    }

    /// `POST /v1/vault/rewrap`: re-wraps every data key with the current master key (admin).
    pub async fn rewrap_vault(&self) -> Result<RewrapReport, ClientError> {
        self.call(Method::POST, "/v1/vault/rewrap", NoBody, None)
            .await
    }
}
