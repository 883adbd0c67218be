//! The access matrix's owner dimension on the agent routes (docs/security.md, "Agent trust
//! model"): every agent route × every role of tenant B × an instance owned by B itself, by
//! another tenant C, and by the platform, with the exact status each must answer. The matrix of
//! `access.rs` covers the same routes for the platform's own (default) tenant.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::auth::{Permission, Role};
use flotilla_core::id::TenantId;
use reqwest::Method;
use serde_json::{Value, json};
use support::{ADMIN_KEY, Backend, Settings, TestServer};

on_both_backends!(agent_routes_answer_by_owner);

const TYPE: &str = "matrix";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// The caller's own tenant.
    Own,
    /// Another tenant.
    Other,
    /// The platform (registered by the bootstrap admin).
    Platform,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Get,
    Heartbeat,
    Deregister,
    /// Whether `GET /v1/agents` lists the instance (200 listed, 404 not).
    Listed,
}

/// What a caller of tenant B with `role` must get for `route` on an instance of `owner`.
fn expected(route: Route, role: Role, owner: Owner) -> u16 {
    let permission = match route {
        Route::Get | Route::Listed => Permission::ReadFleet,
        Route::Heartbeat | Route::Deregister => Permission::RegisterAgents,
    };
    if !role.allows(permission) {
        return 403;
    }
    let visible = role == Role::Admin || owner != Owner::Other;
    let managed = role == Role::Admin || owner == Owner::Own;
    let allowed = match route {
        Route::Get | Route::Listed => visible,
        Route::Heartbeat | Route::Deregister => managed,
    };
    if allowed { 200 } else { 404 }
}

struct World {
    server: TestServer,
    b: TenantId,
    c: TenantId,
}

impl World {
    async fn send(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.server.send(key, method, path, body).await
    }

    /// A fresh instance of `owner` (as seen from tenant B); returns its id.
    async fn instance(&self, owner: Owner) -> String {
        let key = match owner {
            Owner::Own => self.server.create_key(Role::Agent, self.b).await,
            Owner::Other => self.server.create_key(Role::Operator, self.c).await,
            Owner::Platform => ADMIN_KEY.to_owned(),
        };
        let body = json!({"type": TYPE, "url": "http://127.0.0.1:9", "capacity": 1});
        let (status, registered) = self
            .send(&key, Method::POST, "/v1/agents", Some(body))
            .await;
        assert_eq!(status, 201, "{registered}");
        registered["id"].as_str().unwrap().to_owned()
    }
}

async fn agent_routes_answer_by_owner(backend: Backend) {
    let settings = Settings::default().set("agents_egress.allow_loopback_for_tenants", true);
    let server = TestServer::start(backend, settings).await;
    let world = World {
        server,
        b: TenantId(uuid::Uuid::now_v7()),
        c: TenantId(uuid::Uuid::now_v7()),
    };
    let mut failures = Vec::new();
    let mut checked = 0;
    for role in Role::ALL {
        let key = world.server.create_key(role, world.b).await;
        for owner in [Owner::Own, Owner::Other, Owner::Platform] {
            for route in [
                Route::Get,
                Route::Heartbeat,
                Route::Deregister,
                Route::Listed,
            ] {
                let id = world.instance(owner).await;
                let (status, body) = match route {
                    Route::Get => {
                        world
                            .send(&key, Method::GET, &format!("/v1/agents/{id}"), None)
                            .await
                    }
                    Route::Heartbeat => {
                        let beat = Some(json!({"load": 0}));
                        world
                            .send(
                                &key,
                                Method::POST,
                                &format!("/v1/agents/{id}/heartbeat"),
                                beat,
                            )
                            .await
                    }
                    Route::Deregister => {
                        world
                            .send(&key, Method::DELETE, &format!("/v1/agents/{id}"), None)
                            .await
                    }
                    Route::Listed => {
                        let (status, list) =
                            world.send(&key, Method::GET, "/v1/agents", None).await;
                        let listed = list["agents"]
                            .as_array()
                            .is_some_and(|agents| agents.iter().any(|a| a["id"] == json!(id)));
                        let status = match status {
                            200 if listed => 200,
                            200 => 404,
                            other => other,
                        };
                        (status, list)
                    }
                };
                let want = expected(route, role, owner);
                checked += 1;
                if status != want {
                    failures.push(format!(
                        "{route:?} as {role} of B on an instance of {owner:?}: {status}, expected {want}: {body}"
                    ));
                }
                // Only admins see a platform instance's address.
                if status == 200 && matches!(route, Route::Get) && owner == Owner::Platform {
                    assert_eq!(
                        body.get("url").is_some(),
                        role == Role::Admin,
                        "{role}: {body}"
                    );
                }
            }
        }
        // Registering: a tenant's key registers an instance of its own tenant only.
        if role.allows(Permission::RegisterAgents) {
            let body = json!({"type": TYPE, "url": "http://127.0.0.1:9", "capacity": 1});
            let (status, registered) = world
                .send(&key, Method::POST, "/v1/agents", Some(body.clone()))
                .await;
            assert_eq!(status, 201, "{role}: {registered}");
            let id = registered["id"].as_str().unwrap();
            let agent = world
                .server
                .client
                .get_agent(id.parse().unwrap())
                .await
                .unwrap();
            let owner = if role == Role::Admin {
                None
            } else {
                Some(world.b)
            };
            assert_eq!(agent.tenant_id, owner, "{role}");
            // Naming another tenant is for admins only.
            let path = format!("/v1/agents?tenant={}", world.c);
            let (status, _) = world.send(&key, Method::POST, &path, Some(body)).await;
            assert_eq!(
                status,
                if role == Role::Admin { 201 } else { 403 },
                "{role}"
            );
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
