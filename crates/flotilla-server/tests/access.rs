//! Access control, driven through real HTTP: every route × every role × an object of the caller's
//! own tenant and of another, with the exact status each must answer (403 when the role lacks
//! the permission, 404 for another tenant's object — never its contents — and success
//! otherwise); admins crossing tenants only when they say so with `?tenant=`; bad credentials.
//!
//! A new route must join [`ROUTES`]: `every_route_is_in_the_matrix` fails until it does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::auth::{Permission, Role};
use flotilla_core::id::TenantId;
use flotilla_core::tenant::Tenant;
use reqwest::Method;
use serde_json::{Value, json};
use support::{ADMIN_KEY, Backend, Settings, TestServer};

on_both_backends!(
    every_route_answers_every_role_as_the_permission_table_says,
    admins_cross_tenants_only_when_they_name_the_tenant,
    bad_credentials_are_refused_with_401_and_audited,
);

/// A pool without instances: its tasks stay queued, so they can be read and cancelled.
const QUEUED: &str = "queued";

/// Every route under `/v1`, as `METHOD /path` with `{…}` for parameters.
const ROUTES: &[Route] = &[
    Route::SubmitTask,
    Route::ListTasks,
    Route::GetTask,
    Route::CancelTask,
    Route::RegisterAgent,
    Route::ListAgents,
    Route::GetAgent,
    Route::Heartbeat,
    Route::DeregisterAgent,
    Route::ListPools,
    Route::GetPool,
    Route::ListEvents,
    Route::ListAlerts,
    Route::AlertHistory,
    Route::CreateSilence,
    Route::ListSilences,
    Route::DeleteSilence,
    Route::CreateTenant,
    Route::ListTenants,
    Route::GetTenant,
    Route::UpdateTenant,
    Route::CreateKey,
    Route::ListKeys,
    Route::GetKey,
    Route::RevokeKey,
    Route::ListAudit,
    Route::VerifyAudit,
    Route::WriteSecret,
    Route::ReadSecret,
    Route::ListSecrets,
    Route::RotateSecret,
    Route::DeleteSecret,
    Route::Rewrap,
    Route::System,
    Route::ListBudgets,
    Route::SetBudget,
    Route::DeleteBudget,
    Route::ListUsage,
    Route::Recommend,
    Route::CostAnalysis,
    Route::ChatCompletions,
    Route::ListModels,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    SubmitTask,
    ListTasks,
    GetTask,
    CancelTask,
    RegisterAgent,
    ListAgents,
    GetAgent,
    Heartbeat,
    DeregisterAgent,
    ListPools,
    GetPool,
    ListEvents,
    ListAlerts,
    AlertHistory,
    CreateSilence,
    ListSilences,
    DeleteSilence,
    CreateTenant,
    ListTenants,
    GetTenant,
    UpdateTenant,
    CreateKey,
    ListKeys,
    GetKey,
    RevokeKey,
    ListAudit,
    VerifyAudit,
    WriteSecret,
    ReadSecret,
    ListSecrets,
    RotateSecret,
    DeleteSecret,
    Rewrap,
    System,
    ListBudgets,
    SetBudget,
    DeleteBudget,
    ListUsage,
    Recommend,
    CostAnalysis,
    ChatCompletions,
    ListModels,
}

/// Whose object a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Own,
    Other,
}

impl Route {
    /// The route as `/openapi.json` spells it.
    fn template(self) -> (&'static str, &'static str) {
        match self {
            Route::SubmitTask => ("post", "/v1/tasks"),
            Route::ListTasks => ("get", "/v1/tasks"),
            Route::GetTask => ("get", "/v1/tasks/{id}"),
            Route::CancelTask => ("post", "/v1/tasks/{id}/cancel"),
            Route::RegisterAgent => ("post", "/v1/agents"),
            Route::ListAgents => ("get", "/v1/agents"),
            Route::GetAgent => ("get", "/v1/agents/{id}"),
            Route::Heartbeat => ("post", "/v1/agents/{id}/heartbeat"),
            Route::DeregisterAgent => ("delete", "/v1/agents/{id}"),
            Route::ListPools => ("get", "/v1/pools"),
            Route::GetPool => ("get", "/v1/pools/{name}"),
            Route::ListEvents => ("get", "/v1/events"),
            Route::ListAlerts => ("get", "/v1/alerts"),
            Route::AlertHistory => ("get", "/v1/alerts/history"),
            Route::CreateSilence => ("post", "/v1/alerts/silences"),
            Route::ListSilences => ("get", "/v1/alerts/silences"),
            Route::DeleteSilence => ("delete", "/v1/alerts/silences/{id}"),
            Route::CreateTenant => ("post", "/v1/tenants"),
            Route::ListTenants => ("get", "/v1/tenants"),
            Route::GetTenant => ("get", "/v1/tenants/{id}"),
            Route::UpdateTenant => ("patch", "/v1/tenants/{id}"),
            Route::CreateKey => ("post", "/v1/keys"),
            Route::ListKeys => ("get", "/v1/keys"),
            Route::GetKey => ("get", "/v1/keys/{id}"),
            Route::RevokeKey => ("delete", "/v1/keys/{id}"),
            Route::ListAudit => ("get", "/v1/audit"),
            Route::VerifyAudit => ("get", "/v1/audit/verify"),
            Route::WriteSecret => ("put", "/v1/secrets/{path}"),
            Route::ReadSecret => ("get", "/v1/secrets/{path}"),
            Route::ListSecrets => ("get", "/v1/secrets"),
            Route::RotateSecret => ("post", "/v1/secrets/{path}/rotate"),
            Route::DeleteSecret => ("delete", "/v1/secrets/{path}"),
            Route::Rewrap => ("post", "/v1/vault/rewrap"),
            Route::System => ("get", "/v1/system"),
            Route::ListBudgets => ("get", "/v1/budgets"),
            Route::SetBudget => ("put", "/v1/budgets/{period}"),
            Route::DeleteBudget => ("delete", "/v1/budgets/{period}"),
            Route::ListUsage => ("get", "/v1/usage"),
            Route::Recommend => ("post", "/v1/cost/recommend"),
            Route::CostAnalysis => ("get", "/v1/cost/analysis"),
            Route::ChatCompletions => ("post", "/v1/chat/completions"),
            Route::ListModels => ("get", "/v1/models"),
        }
    }

    /// The permission this test expects the route to declare (pinned here, so that a change of a
    /// route's permission shows in review); the matrix itself checks the declared one.
    fn permission(self) -> Permission {
        use Permission as P;
        match self {
            Route::SubmitTask => P::SubmitTasks,
            Route::ListTasks | Route::GetTask => P::ReadTasks,
            Route::CancelTask => P::CancelTasks,
            Route::RegisterAgent | Route::Heartbeat | Route::DeregisterAgent => P::RegisterAgents,
            Route::ListAgents
            | Route::GetAgent
            | Route::ListPools
            | Route::GetPool
            | Route::ListEvents
            | Route::System => P::ReadFleet,
            Route::ListAlerts | Route::AlertHistory | Route::ListSilences => P::ReadAlerts,
            Route::CreateSilence | Route::DeleteSilence => P::SilenceAlerts,
            Route::CreateTenant | Route::UpdateTenant | Route::Rewrap => P::ManageTenants,
            Route::ListTenants | Route::GetTenant | Route::ListKeys | Route::GetKey => P::ReadKeys,
            Route::ListBudgets | Route::ListUsage | Route::CostAnalysis => P::ReadKeys,
            Route::SetBudget | Route::DeleteBudget => P::ManageTenants,
            Route::Recommend | Route::ChatCompletions | Route::ListModels => P::CallModels,
            Route::CreateKey | Route::RevokeKey => P::ManageKeys,
            Route::ListAudit | Route::VerifyAudit => P::ReadAudit,
            Route::WriteSecret | Route::RotateSecret | Route::DeleteSecret => P::WriteSecrets,
            Route::ReadSecret => P::ReadSecrets,
            Route::ListSecrets => P::ListSecrets,
        }
    }

    /// Routes that name one tenant's object, answered 404 to other tenants.
    fn owned(self) -> bool {
        matches!(
            self,
            Route::GetTask
                | Route::CancelTask
                | Route::GetTenant
                | Route::UpdateTenant
                | Route::GetKey
                | Route::RevokeKey
                | Route::ReadSecret
                | Route::RotateSecret
                | Route::DeleteSecret
                | Route::DeleteBudget
        )
    }

    /// Routes whose object is named by its id alone, so an admin reaches another tenant's
    /// without `?tenant=` (tenants themselves).
    fn id_is_explicit(self) -> bool {
        matches!(self, Route::GetTenant | Route::UpdateTenant)
    }

    /// Routes that act within a tenant and accept `?tenant=`.
    fn scoped(self) -> bool {
        matches!(
            self,
            Route::SubmitTask
                | Route::ListTasks
                | Route::GetTask
                | Route::CancelTask
                | Route::CreateKey
                | Route::ListKeys
                | Route::GetKey
                | Route::RevokeKey
                | Route::WriteSecret
                | Route::ReadSecret
                | Route::ListSecrets
                | Route::RotateSecret
                | Route::DeleteSecret
                | Route::ListBudgets
                | Route::SetBudget
                | Route::DeleteBudget
                | Route::ListUsage
                | Route::CostAnalysis
        )
    }

    fn success(self) -> u16 {
        match self {
            Route::SubmitTask => 202,
            Route::RegisterAgent
            | Route::CreateSilence
            | Route::CreateTenant
            | Route::CreateKey
            | Route::WriteSecret
            | Route::RotateSecret => 201,
            Route::DeleteBudget => 204,
            _ => 200,
        }
    }
}

/// The test's world: tenant A (the default one, where the bootstrap admin lives) and tenant B,
/// each with a key of every role.
struct World {
    server: TestServer,
    /// Holds the vault's master key file (PostgreSQL has no embedded one).
    _dir: tempfile::TempDir,
    b: TenantId,
    keys_a: Vec<(Role, String)>,
    keys_b: Vec<(Role, String)>,
}

/// One prepared request.
struct Call {
    method: Method,
    path: String,
    body: Option<Value>,
}

impl World {
    async fn new(backend: Backend, settings: Settings) -> World {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("master.key");
        std::fs::write(&key_file, format!("{}\n", "ab".repeat(32))).unwrap();
        // A rule by tenant that only notifies: what a tenant's operator may silence.
        let settings = settings.pool(QUEUED).raw(&format!(
            "[vault]\nmaster_key_file = \"{}\"\n\
             [[alerts]]\nname = \"tenant_tokens\"\nsignal = \"hourly_tokens\"\nby = \"tenant\"\n\
             comparison = \">\"\nthreshold = 1000000000\nfor = \"0s\"\nseverity = \"info\"\n",
            key_file.display()
        ));
        let server = TestServer::start(backend, settings).await;
        let b = Tenant {
            id: TenantId(uuid::Uuid::now_v7()),
            name: "tenant b".into(),
            created_at: chrono::Utc::now(),
            rate_limit: None,
        };
        assert!(server.store.create_tenant(&b).await.unwrap());
        let mut keys_a = Vec::new();
        let mut keys_b = Vec::new();
        for role in Role::ALL {
            keys_a.push((role, server.create_key(role, TenantId::DEFAULT).await));
            keys_b.push((role, server.create_key(role, b.id).await));
        }
        World {
            server,
            _dir: dir,
            b: b.id,
            keys_a,
            keys_b,
        }
    }

    fn admin_of(&self, tenant: TenantId) -> &str {
        let keys = if tenant == self.b {
            &self.keys_b
        } else {
            &self.keys_a
        };
        &keys[0].1
    }

    /// Sends a request with `key` (none: no credentials); returns status and JSON body.
    async fn send(&self, key: Option<&str>, call: &Call) -> (u16, Value) {
        let mut request = self
            .server
            .http
            .request(call.method.clone(), self.server.url(&call.path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// An admin request that must succeed, for setting up objects.
    async fn setup(&self, tenant: TenantId, method: Method, path: &str, body: Value) -> Value {
        let call = Call {
            method,
            path: path.to_owned(),
            body: Some(body),
        };
        let (status, body) = self.send(Some(self.admin_of(tenant)), &call).await;
        assert!(
            (200..300).contains(&status),
            "setup {path}: {status} {body}"
        );
        body
    }

    /// A fresh object of `tenant` for `route` (mutating routes consume theirs) and the request.
    async fn prepare(&self, route: Route, tenant: TenantId) -> Call {
        let unique = uuid::Uuid::now_v7().simple().to_string();
        let (method, template) = route.template();
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let mut body = None;
        let path = match route {
            Route::SubmitTask => {
                body = Some(json!({"agent_type": QUEUED, "input": {}}));
                template.to_owned()
            }
            Route::GetTask | Route::CancelTask => {
                let task = self
                    .setup(
                        tenant,
                        Method::POST,
                        "/v1/tasks",
                        json!({"agent_type": QUEUED, "input": {}}),
                    )
                    .await;
                template.replace("{id}", task["id"].as_str().unwrap())
            }
            Route::RegisterAgent => {
                body = Some(json!({"type": QUEUED, "url": "http://127.0.0.1:9", "capacity": 1}));
                template.to_owned()
            }
            Route::GetAgent | Route::Heartbeat | Route::DeregisterAgent => {
                // A type no task is submitted to: with no attempt in flight, a deregistration
                // answers 200, not 202 (draining).
                let agent = self
                    .setup(
                        tenant,
                        Method::POST,
                        "/v1/agents",
                        json!({"type": "parked", "url": "http://127.0.0.1:9", "capacity": 1}),
                    )
                    .await;
                if route == Route::Heartbeat {
                    body = Some(json!({"load": 0}));
                }
                template.replace("{id}", agent["id"].as_str().unwrap())
            }
            Route::GetPool => template.replace("{name}", QUEUED),
            Route::CreateSilence => {
                body = Some(json!({"rule": "tenant_tokens", "duration_s": 60}));
                template.to_owned()
            }
            Route::DeleteSilence => {
                let silence = self
                    .setup(
                        tenant,
                        Method::POST,
                        "/v1/alerts/silences",
                        json!({"rule": "tenant_tokens", "duration_s": 60, "tenant": tenant}),
                    )
                    .await;
                template.replace("{id}", &silence["id"].to_string().replace('"', ""))
            }
            Route::CreateTenant => {
                body = Some(json!({"name": format!("t{unique}")}));
                template.to_owned()
            }
            Route::GetTenant | Route::UpdateTenant => {
                if route == Route::UpdateTenant {
                    body = Some(json!({"rate_limit": "1000/s"}));
                }
                template.replace("{id}", &tenant.to_string())
            }
            Route::CreateKey => {
                body = Some(json!({"name": "made in the matrix", "role": "submitter"}));
                template.to_owned()
            }
            Route::GetKey | Route::RevokeKey => {
                let key = self
                    .setup(
                        tenant,
                        Method::POST,
                        "/v1/keys",
                        json!({"name": "target", "role": "submitter"}),
                    )
                    .await;
                template.replace("{id}", key["id"].as_str().unwrap())
            }
            Route::WriteSecret => {
                body = Some(json!({"value": "s3cr3t-value"}));
                template.replace("{path}", &format!("matrix/{unique}"))
            }
            Route::ReadSecret | Route::RotateSecret | Route::DeleteSecret => {
                let path = format!("matrix/{unique}");
                self.setup(
                    tenant,
                    Method::PUT,
                    &format!("/v1/secrets/{path}"),
                    json!({"value": "s3cr3t-value"}),
                )
                .await;
                template.replace("{path}", &path)
            }
            Route::SetBudget => {
                body = Some(json!({"limit": "100"}));
                template.replace("{period}", "daily")
            }
            Route::DeleteBudget => {
                // Each tenant's budget of its own period, so that deleting "the other tenant's"
                // finds none in the caller's tenant.
                let period = if tenant == TenantId::DEFAULT {
                    "daily"
                } else {
                    "monthly"
                };
                let path = template.replace("{period}", period);
                self.setup(tenant, Method::PUT, &path, json!({"limit": "100"}))
                    .await;
                path
            }
            Route::Recommend => {
                body = Some(json!({"type": "code_generator"}));
                template.to_owned()
            }
            Route::ChatCompletions => {
                // The built-in simulated provider answers it.
                body = Some(
                    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
                );
                template.to_owned()
            }
            _ => template.to_owned(),
        };
        Call { method, path, body }
    }
}

/// What a caller of tenant A with `role` must get for `route`, which declares `permission`, on
/// an object of `owner`.
fn expected(route: Route, permission: Permission, role: Role, owner: Owner) -> u16 {
    if !role.allows(permission) {
        403
    } else if owner == Owner::Other && !(route.id_is_explicit() && role == Role::Admin) {
        404
    } else {
        route.success()
    }
}

async fn every_route_answers_every_role_as_the_permission_table_says(backend: Backend) {
    let world = World::new(backend, Settings::default()).await;
    let declared = declared_routes(&world.server).await;
    let mut failures = Vec::new();
    let mut checked = 0;
    for &route in ROUTES {
        let (method, path) = route.template();
        let permission = declared
            .iter()
            .find(|d| d.method == method && d.path == path)
            .and_then(|d| d.permission)
            .unwrap_or_else(|| panic!("{route:?} declares no permission in /openapi.json"));
        let owners: &[Owner] = if route.owned() {
            &[Owner::Own, Owner::Other]
        } else {
            &[Owner::Own]
        };
        for &owner in owners {
            for (role, key) in &world.keys_a {
                let tenant = match owner {
                    Owner::Own => TenantId::DEFAULT,
                    Owner::Other => world.b,
                };
                let call = world.prepare(route, tenant).await;
                let (status, body) = world.send(Some(key), &call).await;
                let want = expected(route, permission, *role, owner);
                checked += 1;
                if status != want {
                    failures.push(format!(
                        "{route:?} as {role} on {owner:?}: {} {} → {status}, expected {want}: {body}",
                        call.method, call.path
                    ));
                } else if status >= 400 {
                    // Refusals are JSON errors, and another tenant's object is never described.
                    assert!(body["error"]["code"].is_string(), "{route:?}: {body}");
                    assert!(
                        !body.to_string().contains("s3cr3t-value"),
                        "{route:?} leaked a secret in a refusal: {body}"
                    );
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} requests answered wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );
    world.server.stop().await;
}

async fn admins_cross_tenants_only_when_they_name_the_tenant(backend: Backend) {
    let world = World::new(backend, Settings::default()).await;
    let mut failures = Vec::new();
    for &route in ROUTES.iter().filter(|r| r.scoped()) {
        for (role, key) in &world.keys_a {
            let mut call = world.prepare(route, world.b).await;
            call.path = format!("{}?tenant={}", call.path, world.b);
            let (status, body) = world.send(Some(key), &call).await;
            let want = if *role == Role::Admin {
                route.success()
            } else {
                403
            };
            if status != want {
                failures.push(format!(
                    "{route:?} as {role} with ?tenant=B: {status}, expected {want}: {body}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // What an admin creates with ?tenant= belongs to that tenant.
    let task = world
        .setup(
            TenantId::DEFAULT,
            Method::POST,
            &format!("/v1/tasks?tenant={}", world.b),
            json!({"agent_type": QUEUED, "input": {}}),
        )
        .await;
    assert_eq!(task["tenant_id"], json!(world.b.to_string()));
    let b_viewer = &world.keys_b[4].1;
    let call = Call {
        method: Method::GET,
        path: format!("/v1/tasks/{}", task["id"].as_str().unwrap()),
        body: None,
    };
    assert_eq!(world.send(Some(b_viewer), &call).await.0, 200);
    // A malformed tenant id is a 400 naming the parameter.
    let call = Call {
        method: Method::GET,
        path: "/v1/tasks?tenant=nope".into(),
        body: None,
    };
    let (status, body) = world.send(Some(ADMIN_KEY), &call).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("tenant"))
    );
    world.server.stop().await;
}

async fn bad_credentials_are_refused_with_401_and_audited(backend: Backend) {
    let world = World::new(
        backend,
        Settings::default().set("rate_limits.auth_failures", "off"),
    )
    .await;
    let server = &world.server;
    // An expired key and a revoked one.
    let expired = {
        let (text, mut record) = flotilla_server::auth::bootstrap::new_key(
            TenantId::DEFAULT,
            Role::Admin,
            "expired",
            chrono::Utc::now(),
        );
        record.expires_at = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
        server.store.insert_api_key(&record).await.unwrap();
        text
    };
    let revoked = world
        .setup(
            TenantId::DEFAULT,
            Method::POST,
            "/v1/keys",
            json!({"name": "soon revoked", "role": "admin"}),
        )
        .await;
    let revoked_key = revoked["key"].as_str().unwrap().to_owned();
    let call = Call {
        method: Method::GET,
        path: "/v1/tasks".into(),
        body: None,
    };
    assert_eq!(world.send(Some(&revoked_key), &call).await.0, 200);
    world
        .setup(
            TenantId::DEFAULT,
            Method::DELETE,
            &format!("/v1/keys/{}", revoked["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    let wrong_secret = format!(
        "{}_wrongsecret",
        &ADMIN_KEY[..ADMIN_KEY.rfind('_').unwrap()]
    );
    let presented: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("garbled", Some("not a key".into())),
        ("unknown id", Some("flt_nosuchkey_abcdef".into())),
        ("wrong secret", Some(wrong_secret.clone())),
        ("expired", Some(expired.clone())),
        ("revoked", Some(revoked_key.clone())),
    ];
    for &route in ROUTES {
        let call = world.prepare(route, TenantId::DEFAULT).await;
        for (what, key) in &presented {
            let (status, body) = world.send(key.as_deref(), &call).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (401, Some("unauthenticated")),
                "{route:?} with a {what} key: {body}"
            );
        }
    }
    // The failures are in the audit log, aggregated per source and minute (one entry, or a
    // few when the test straddles a minute), and never with a secret.
    let (status, page) = world
        .send(
            Some(ADMIN_KEY),
            &Call {
                method: Method::GET,
                path: "/v1/audit?action=auth.failure&limit=1000".into(),
                body: None,
            },
        )
        .await;
    assert_eq!(status, 200);
    let entries = page["entries"].as_array().unwrap();
    assert!(
        (1..=3).contains(&entries.len()),
        "{} entries for {} failures",
        entries.len(),
        ROUTES.len() * presented.len()
    );
    assert!(entries.iter().all(|e| e["outcome"] == "denied"));
    let text = page.to_string();
    for secret in [&wrong_secret, &expired, &revoked_key] {
        let secret_part = &secret[secret.rfind('_').unwrap() + 1..];
        assert!(
            !text.contains(secret_part),
            "a secret reached the audit log"
        );
    }
    world.server.stop().await;
}

/// A route as the router describes it in `/openapi.json`.
struct Declared {
    method: String,
    path: String,
    /// The scope of its `bearer` requirement: the permission the router checks.
    permission: Option<Permission>,
}

/// Every route the server's router has, from the `/openapi.json` it generates from itself.
async fn declared_routes(server: &TestServer) -> Vec<Declared> {
    let spec: Value = server
        .http
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut routes = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let scopes = operation["security"][0]["bearer"].as_array();
            let permission = scopes.and_then(|s| s.first()).map(|scope| {
                let scope = scope.as_str().unwrap();
                Permission::ALL
                    .into_iter()
                    .find(|p| p.as_str() == scope)
                    .unwrap_or_else(|| panic!("{method} {path}: unknown permission {scope}"))
            });
            routes.push(Declared {
                method: method.clone(),
                path: path.clone(),
                permission,
            });
        }
    }
    routes
}

/// The router's routes under `/v1` are exactly [`ROUTES`], each declaring the permission this
/// test pins for it; the routes outside `/v1` need no key.
#[tokio::test]
async fn every_route_is_in_the_matrix() {
    let server = TestServer::start(Backend::Sqlite, Settings::default()).await;
    let declared = declared_routes(&server).await;
    let mut documented = Vec::new();
    for route in &declared {
        if route.path.starts_with("/v1/") {
            documented.push(format!(
                "{} {} needs {:?}",
                route.method, route.path, route.permission
            ));
        } else {
            assert_eq!(route.permission, None, "{} {}", route.method, route.path);
        }
    }
    let mut in_matrix: Vec<String> = ROUTES
        .iter()
        .map(|r| {
            let (method, path) = r.template();
            format!("{method} {path} needs {:?}", Some(r.permission()))
        })
        .collect();
    documented.sort();
    in_matrix.sort();
    assert_eq!(
        documented, in_matrix,
        "the router's routes and permissions differ from the access matrix"
    );
    server.stop().await;
}
