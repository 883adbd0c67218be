//! Rate limits of the model gateway hold across replicas (docs/design.md §7): two control planes on
//! one PostgreSQL database share their buckets, so a tenant's calls per minute do not double
//! with a second replica. PostgreSQL only: SQLite is one control plane by design.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::{ADMIN_KEY, Backend, Database, Settings, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_tenant_requests_per_minute() {
    let database = Database::create(Backend::Postgres);
    let settings = Settings::default()
        .set("gateway.usage_flush_ms", 50)
        .set("gateway.tenant_requests_per_minute", 10);
    let first = TestServer::start_on(database.location.open().await, settings.clone()).await;
    let second = TestServer::start_on(database.location.open().await, settings).await;
    let body =
        json!({"model": "gemini-2.0-flash", "messages": [{"role": "user", "content": "hi"}]});

    let mut statuses = Vec::new();
    let mut refused = None;
    for n in 0..11 {
        let server = if n % 2 == 0 { &first } else { &second };
        let response = server
            .http
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        statuses.push(status);
        if status == 429 {
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            refused = Some((retry_after, response.text().await.unwrap()));
        }
    }
    // Ten calls pass between the two replicas (five each), the eleventh is refused: with
    // per-process buckets each replica would have let ten through.
    assert_eq!(&statuses[..10], [200; 10], "{statuses:?}");
    assert_eq!(statuses[10], 429, "{statuses:?}");
    let (retry_after, text) = refused.unwrap();
    let retry: u64 = retry_after.unwrap().parse().unwrap();
    // One call comes back every 6 s.
    assert!((1..=6).contains(&retry), "{retry}");
    let error: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10 model calls per minute for the tenant"),
        "{error}"
    );
    // The other replica refuses too.
    let again = first
        .http
        .post(first.url("/v1/chat/completions"))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 429);

    first.stop().await;
    second.stop().await;
    database.remove().await;
}
