//! Budgets, the usage ledger and cost: `/v1/budgets`, `/v1/usage`, `/v1/cost/*`.

use crate::{Client, ClientError, Json, NoBody, RequestBody};
use flotilla_core::analysis::Analysis;
use flotilla_core::budget::{BudgetList, BudgetRequest, BudgetStatus, Period};
use flotilla_core::recommend::{RecommendRequest, Recommendation};
use flotilla_core::usage::UsagePage;
use reqwest::Method;

/// Filters and paging of `GET /v1/usage`; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListUsage {
    /// Another tenant (admin keys only).
    pub tenant: Option<String>,
    pub model: Option<String>,
    pub agent_type: Option<String>,
    pub task_id: Option<String>,
    /// RFC 3339 time or date.
    pub since: Option<String>,
    /// RFC 3339 time or date.
    pub until: Option<String>,
    /// The `next` cursor of the previous page.
    pub before: Option<String>,
    /// 1-10000 (server default 100).
    pub limit: Option<u32>,
}

impl ListUsage {
    fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("tenant", &self.tenant),
            ("model", &self.model),
            ("agent_type", &self.agent_type),
            ("task_id", &self.task_id),
            ("since", &self.since),
            ("until", &self.until),
            ("before", &self.before),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
        .chain(self.limit.map(|l| ("limit", l.to_string())))
        .collect()
    }
}

/// A CSV export of `GET /v1/usage?format=csv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageCsv {
    /// The CSV text, header row first.
    pub text: String,
    /// The cursor of the next page (the `x-next-cursor` header), if there is one.
    pub next: Option<String>,
}

/// `?tenant=` when acting on another tenant.
fn tenant_query(tenant: Option<&str>) -> Vec<(&'static str, String)> {
    tenant
        .map(|t| ("tenant", t.to_owned()))
        .into_iter()
        .collect()
}

impl Client {
    /// `GET /v1/budgets`: the tenant's budgets with the spend of their current windows.
    pub async fn list_budgets(&self, tenant: Option<&str>) -> Result<BudgetList, ClientError> {
        self.call_with(
            Method::GET,
            "/v1/budgets",
            &tenant_query(tenant),
            NoBody,
            None,
        )
        .await
    }

    /// `PUT /v1/budgets/{period}`: sets (or replaces) the tenant's budget for a period.
    pub async fn set_budget(
        &self,
        period: Period,
        budget: &BudgetRequest,
        tenant: Option<&str>,
    ) -> Result<BudgetStatus, ClientError> {
        self.call_with(
            Method::PUT,
            &format!("/v1/budgets/{}", period.as_str()),
            &tenant_query(tenant),
            Json(budget),
            None,
        )
        .await
    }

    /// `DELETE /v1/budgets/{period}`: removes the tenant's budget for a period (404 when none).
    pub async fn delete_budget(
        &self,
        period: Period,
        tenant: Option<&str>,
    ) -> Result<(), ClientError> {
        self.send_raw(
            Method::DELETE,
            &format!("/v1/budgets/{}", period.as_str()),
            &tenant_query(tenant),
            NoBody,
        )
        .await
        .map(|_| ())
    }

    /// `GET /v1/usage`: one page of usage records, newest first.
    pub async fn list_usage(&self, filter: &ListUsage) -> Result<UsagePage, ClientError> {
        self.call_with(Method::GET, "/v1/usage", &filter.query(), NoBody, None)
            .await
    }

    /// `GET /v1/usage?format=csv`: one page of usage records as CSV.
    pub async fn usage_csv(&self, filter: &ListUsage) -> Result<UsageCsv, ClientError> {
        let mut query = filter.query();
        query.push(("format", "csv".to_owned()));
        let (headers, bytes) = self
            .send_raw(Method::GET, "/v1/usage", &query, NoBody)
            .await?;
        let text = String::from_utf8(bytes).map_err(|e| {
            ClientError::Decode(format!("GET /v1/usage: the CSV is not UTF-8: {e}"))
        })?;
        let next = headers
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(UsageCsv { text, next })
    }

    /// `POST /v1/cost/recommend`: the model that best suits a task profile.
    pub async fn recommend_model(
        &self,
        request: &RecommendRequest,
    ) -> Result<Recommendation, ClientError> {
        self.call(Method::POST, "/v1/cost/recommend", Json(request), None)
            .await
    }

    /// `GET /v1/cost/analysis`: the tenant's spending over the last `days` days (server default
    /// 30).
    pub async fn cost_analysis(
        &self,
        days: Option<u32>,
        tenant: Option<&str>,
    ) -> Result<Analysis, ClientError> {
        let mut query = tenant_query(tenant);
        if let Some(days) = days {
            query.push(("days", days.to_string()));
        }
        self.call_with(Method::GET, "/v1/cost/analysis", &query, NoBody, None)
            .await
    }

    /// A call whose answer is not JSON (CSV, or `204` without a body): its headers and body.
    async fn send_raw<B: RequestBody>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: B,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .timeout(self.request_timeout);
        if !query.is_empty() {
            request = request.query(query);
        }
        let response = body
            .apply(request)?
            .send()
            .await
            .map_err(ClientError::Transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(ClientError::Transport)?
            .to_vec();
        if !status.is_success() {
            let request_id = headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Err(ClientError::from_response(
                status.as_u16(),
                &bytes,
                request_id,
            ));
        }
        Ok((headers, bytes))
    }
}
