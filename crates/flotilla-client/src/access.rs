//! Tenants, keys and the audit log.

use crate::{Client, ClientError, Json, NoBody};
use flotilla_core::audit::AuditPage;
use flotilla_core::auth::{CreatedKey, KeyList, KeyView, NewKeyRequest};
use flotilla_core::tenant::{NewTenant, Tenant, TenantList, TenantUpdate};
use reqwest::Method;

/// `?tenant=` when acting on another tenant.
fn tenant_query(tenant: Option<&str>) -> Vec<(&'static str, String)> {
    tenant
        .map(|t| ("tenant", t.to_owned()))
        .into_iter()
        .collect()
}

impl Client {
    /// `POST /v1/tenants`.
    pub async fn create_tenant(&self, tenant: &NewTenant) -> Result<Tenant, ClientError> {
        self.call(Method::POST, "/v1/tenants", Json(tenant), None)
            .await
    }

    /// `GET /v1/tenants`.
    pub async fn list_tenants(&self) -> Result<TenantList, ClientError> {
        self.call(Method::GET, "/v1/tenants", NoBody, None).await
    }

    /// `GET /v1/tenants/{id}`.
    pub async fn get_tenant(&self, id: &str) -> Result<Tenant, ClientError> {
        self.call(Method::GET, &format!("/v1/tenants/{id}"), NoBody, None)
            .await
    }

    /// `PATCH /v1/tenants/{id}`.
    pub async fn update_tenant(
        &self,
        id: &str,
        update: &TenantUpdate,
    ) -> Result<Tenant, ClientError> {
        self.call(
            Method::PATCH,
            &format!("/v1/tenants/{id}"),
            Json(update),
            None,
        )
        .await
    }

    /// `POST /v1/keys` (in `tenant` when given: admin keys only).
    pub async fn create_key(
        &self,
        key: &NewKeyRequest,
        tenant: Option<&str>,
    ) -> Result<CreatedKey, ClientError> {
        self.call_with(
            Method::POST,
            "/v1/keys",
            &tenant_query(tenant),
            Json(key),
            None,
        )
        .await
    }

    /// `GET /v1/keys`.
    pub async fn list_keys(&self, tenant: Option<&str>) -> Result<KeyList, ClientError> {
        self.call_with(Method::GET, "/v1/keys", &tenant_query(tenant), NoBody, None)
            .await
    }

    /// `DELETE /v1/keys/{id}`.
    pub async fn revoke_key(&self, id: &str, tenant: Option<&str>) -> Result<KeyView, ClientError> {
        self.call_with(
            Method::DELETE,
            &format!("/v1/keys/{id}"),
            &tenant_query(tenant),
            NoBody,
            None,
        )
        .await
    }

    /// `GET /v1/audit` (`after`, `limit`, `action`, `tenant`).
    pub async fn list_audit(&self, query: &[(&str, String)]) -> Result<AuditPage, ClientError> {
        self.call_with(Method::GET, "/v1/audit", query, NoBody, None)
            .await
    }

    /// `GET /v1/audit/verify` (`since`: an anchor `SEQ:HASH`).
    pub async fn verify_audit(
        &self,
        since: Option<&str>,
    ) -> Result<flotilla_core::audit::AuditVerification, ClientError> {
        let query: Vec<(&str, String)> =
            since.map(|s| ("since", s.to_owned())).into_iter().collect();
        self.call_with(Method::GET, "/v1/audit/verify", &query, NoBody, None)
            .await
    }
}
