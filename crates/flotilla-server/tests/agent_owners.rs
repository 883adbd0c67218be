//! The agent plane's owners (docs/security.md, "Agent trust model"): every instance belongs to
//! the tenant whose key registered it or to the platform, a task reaches only an instance of its
//! own tenant or a platform instance that serves it, and only an instance's owner (or an admin)
//! can heartbeat, drain or deregister it — on SQLite and PostgreSQL, through real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use flotilla_core::auth::Role;
use flotilla_core::id::{AgentId, TenantId};
use flotilla_core::task::TaskStatus;
use flotilla_core::wire::RegisterAgent;
use flotilla_testkit::{Behaviour, ScriptedAgent};
use serde_json::{Value, json};
use support::{ADMIN_KEY, Backend, Settings, TestServer, task};

on_both_backends!(
    a_rogue_tenant_agent_never_receives_another_tenants_task,
    a_tenants_own_agent_runs_its_tasks_before_the_platforms,
    only_the_owner_or_an_admin_manages_an_instance,
    tenants_see_their_own_instances_and_the_platforms_without_details,
    a_pool_serves_only_the_tenants_it_names,
    tenant_registrations_are_limited,
    registrations_and_deregistrations_are_audited,
    a_tenants_agent_may_not_reach_loopback_unless_allowed,
    a_tenants_own_agent_tells_its_submitter_what_it_answered,
);

/// Tenant agents at 127.0.0.1 (the scripted agents) need loopback, which the egress policy
/// refuses tenants by default.
fn settings() -> Settings {
    Settings::default().set("agents_egress.allow_loopback_for_tenants", true)
}

async fn tenant(server: &TestServer, name: &str) -> TenantId {
    server.create_tenant(name).await
}

fn registration(url: &str, agent_type: &str, capacity: u32, weight: u32) -> RegisterAgent {
    RegisterAgent {
        agent_type: agent_type.to_owned(),
        url: url.to_owned(),
        capacity,
        weight: Some(weight),
        metadata: Some(json!({"zone": "secret-zone"})),
        version: None,
    }
}

async fn finish(
    client: &flotilla_client::Client,
    id: flotilla_core::id::TaskId,
) -> flotilla_core::task::Task {
    TestServer::finish_with(client, id).await
}

async fn register_with(server: &TestServer, key: &str, body: &RegisterAgent) -> AgentId {
    server
        .client_with(key)
        .register_agent(body)
        .await
        .unwrap()
        .id
}

async fn a_rogue_tenant_agent_never_receives_another_tenants_task(backend: Backend) {
    let server = TestServer::start(backend, settings()).await;
    let (a, b) = (tenant(&server, "a").await, tenant(&server, "b").await);
    let a_operator = server.create_key(Role::Operator, a).await;
    let b_submitter = server.create_key(Role::Submitter, b).await;
    // The platform's instance is small and slow, so b's tasks queue behind it while the rogue
    // has room to spare: only the invariant keeps them from the rogue.
    let platform = ScriptedAgent::start(Behaviour::Succeed {
        delay: std::time::Duration::from_millis(50),
    })
    .unwrap();
    let rogue = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    // The attack of the security review: a big, heavy rogue instance beside a small platform one.
    register_with(
        &server,
        ADMIN_KEY,
        &registration(&platform.url(), "shared", 2, 1),
    )
    .await;
    let rogue_id = register_with(
        &server,
        &a_operator,
        &registration(&rogue.url(), "shared", 100, 1000),
    )
    .await;
    let b_client = server.client_with(&b_submitter);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            b_client
                .submit_task(&task("shared", json!({"n": i})))
                .await
                .unwrap()
                .id,
        );
    }
    for id in ids {
        let done = finish(&b_client, id).await;
        assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
        assert_ne!(done.agent_id, Some(rogue_id));
    }
    assert_eq!(
        rogue.calls(),
        0,
        "the rogue instance received another tenant's task"
    );
    assert_eq!(platform.calls(), 20);
    server.stop().await;
}

async fn a_tenants_own_agent_runs_its_tasks_before_the_platforms(backend: Backend) {
    let server = TestServer::start(backend, settings()).await;
    let a = tenant(&server, "a").await;
    let a_operator = server.create_key(Role::Operator, a).await;
    let platform = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let own = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    register_with(
        &server,
        ADMIN_KEY,
        &registration(&platform.url(), "mixed", 8, 1),
    )
    .await;
    register_with(
        &server,
        &a_operator,
        &registration(&own.url(), "mixed", 8, 1),
    )
    .await;
    let client = server.client_with(&a_operator);
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            client
                .submit_task(&task("mixed", json!({"n": i})))
                .await
                .unwrap()
                .id,
        );
    }
    for id in ids {
        assert_eq!(finish(&client, id).await.status, TaskStatus::Succeeded);
    }
    assert_eq!(
        (own.calls(), platform.calls()),
        (6, 0),
        "own instances go first"
    );
    // The default tenant's (the admin's) tasks never reach a's instance.
    let theirs = server.submit(&task("mixed", json!({}))).await;
    assert_eq!(server.finish(theirs.id).await.status, TaskStatus::Succeeded);
    assert_eq!((own.calls(), platform.calls()), (6, 1));
    server.stop().await;
}

async fn only_the_owner_or_an_admin_manages_an_instance(backend: Backend) {
    let server = TestServer::start(backend, settings()).await;
    let (a, b) = (tenant(&server, "a").await, tenant(&server, "b").await);
    let a_agent_key = server.create_key(Role::Agent, a).await;
    let b_operator = server.create_key(Role::Operator, b).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let platform_id = server.register(&agent, "managed", 1).await;
    let own_id = register_with(
        &server,
        &a_agent_key,
        &registration(&agent.url(), "managed", 1, 1),
    )
    .await;
    let beat = json!({"load": 0});
    let post = reqwest::Method::POST;
    let delete = reqwest::Method::DELETE;
    for id in [own_id, platform_id] {
        // Another tenant's key: exactly as for a missing instance.
        let (status, body) = server
            .send(
                &b_operator,
                post.clone(),
                &format!("/v1/agents/{id}/heartbeat"),
                Some(beat.clone()),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{body}"
        );
        let (status, _) = server
            .send(
                &b_operator,
                delete.clone(),
                &format!("/v1/agents/{id}"),
                None,
            )
            .await;
        assert_eq!(status, 404);
        let (status, _) = server
            .send(
                &b_operator,
                reqwest::Method::GET,
                &format!("/v1/agents/{id}"),
                None,
            )
            .await;
        // The platform's instance serves b, which may see it (without its details); a's is
        // invisible to b.
        assert_eq!(status, if id == platform_id { 200 } else { 404 });
    }
    // A tenant's key cannot touch the platform's instance either.
    let (status, _) = server
        .send(
            &a_agent_key,
            delete.clone(),
            &format!("/v1/agents/{platform_id}"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    // The owner heartbeats and drains its own.
    let (status, body) = server
        .send(
            &a_agent_key,
            post.clone(),
            &format!("/v1/agents/{own_id}/heartbeat"),
            Some(json!({"load": 0, "status": "draining"})),
        )
        .await;
    assert_eq!(
        (status, body["desired"].as_str()),
        (200, Some("drain")),
        "{body}"
    );
    let (status, _) = server
        .send(
            &a_agent_key,
            delete.clone(),
            &format!("/v1/agents/{own_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    // An admin may remove anyone's.
    assert_eq!(server.deregister(platform_id).await.0, 200);
    assert!(server.client.list_agents().await.unwrap().agents.is_empty());
    server.stop().await;
}

async fn tenants_see_their_own_instances_and_the_platforms_without_details(backend: Backend) {
    let server = TestServer::start(backend, settings()).await;
    let (a, b) = (tenant(&server, "a").await, tenant(&server, "b").await);
    let a_operator = server.create_key(Role::Operator, a).await;
    let b_viewer = server.create_key(Role::Viewer, b).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let platform_id = register_with(
        &server,
        ADMIN_KEY,
        &registration(&agent.url(), "seen", 1, 1),
    )
    .await;
    let own_id = register_with(
        &server,
        &a_operator,
        &registration(&agent.url(), "seen", 1, 1),
    )
    .await;

    let (_, listed) = server
        .send(&b_viewer, reqwest::Method::GET, "/v1/agents", None)
        .await;
    let agents = listed["agents"].as_array().unwrap();
    assert_eq!(
        agents.len(),
        1,
        "b sees only the platform's instance: {listed}"
    );
    assert_eq!(agents[0]["id"], json!(platform_id.to_string()));
    assert_eq!(agents[0]["tenant_id"], Value::Null);
    assert!(
        agents[0].get("url").is_none(),
        "a platform URL reached a tenant: {listed}"
    );
    assert_eq!(agents[0]["metadata"], json!({}));

    let (_, listed) = server
        .send(&a_operator, reqwest::Method::GET, "/v1/agents", None)
        .await;
    let mine: Vec<&Value> = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["id"] == json!(own_id.to_string()))
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        mine[0]["url"],
        json!(agent.url()),
        "a tenant sees its own instance whole"
    );
    assert_eq!(mine[0]["tenant_id"], json!(a.to_string()));

    let everything = server.client.list_agents().await.unwrap().agents;
    assert_eq!(everything.len(), 2, "an admin sees every instance");
    assert!(everything.iter().all(|x| x.url == agent.url()));
    server.stop().await;
}

async fn a_pool_serves_only_the_tenants_it_names(backend: Backend) {
    // Tenants need no record for their keys and tasks: ids known before the start will do.
    let (a, b) = (
        TenantId(uuid::Uuid::now_v7()),
        TenantId(uuid::Uuid::now_v7()),
    );
    let settings = settings()
        .pool("reserved")
        .raw(&format!("tenants = [\"{a}\"]"));
    let server = TestServer::start(backend, settings).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    server.register(&agent, "reserved", 4).await;
    let a_client = server.client_with(&server.create_key(Role::Submitter, a).await);
    let b_client = server.client_with(&server.create_key(Role::Submitter, b).await);
    let ok = a_client
        .submit_task(&task("reserved", json!({})))
        .await
        .unwrap();
    assert_eq!(finish(&a_client, ok.id).await.status, TaskStatus::Succeeded);
    let refused = b_client
        .submit_task(&task("reserved", json!({})))
        .await
        .unwrap_err();
    // As for a type nobody serves: the pool is none of b's business.
    assert!(
        matches!(
            &refused,
            flotilla_client::ClientError::Api { status: 422, error } if error.code == "unknown_agent_type"
        ),
        "{refused}"
    );
    assert_eq!(agent.calls(), 1);
    server.stop().await;
}

async fn tenant_registrations_are_limited(backend: Backend) {
    let settings = settings()
        .set("fleet.max_instances_per_tenant", 3)
        .set("fleet.max_types_per_tenant", 2);
    let server = TestServer::start(backend, settings).await;
    let a = tenant(&server, "a").await;
    let key = server.create_key(Role::Agent, a).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let register = |agent_type: &'static str| {
        let body = serde_json::to_value(registration(&agent.url(), agent_type, 1, 1)).unwrap();
        let server = &server;
        let key = key.clone();
        async move {
            server
                .send(&key, reqwest::Method::POST, "/v1/agents", Some(body))
                .await
        }
    };
    assert_eq!(register("one").await.0, 201);
    assert_eq!(register("two").await.0, 201);
    let (status, body) = register("three").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("agent_limit")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_types_per_tenant")
    );
    assert_eq!(register("one").await.0, 201);
    let (status, body) = register("two").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_instances_per_tenant")
    );
    // The platform's registrations are not the tenant's.
    server.register(&agent, "three", 1).await;
    assert_eq!(server.client.list_agents().await.unwrap().agents.len(), 4);
    server.stop().await;
}

async fn registrations_and_deregistrations_are_audited(backend: Backend) {
    let server = TestServer::start(backend, settings()).await;
    let a = tenant(&server, "a").await;
    let key = server.create_key(Role::Agent, a).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let id = register_with(&server, &key, &registration(&agent.url(), "audited", 1, 1)).await;
    let (status, _) = server
        .send(
            &key,
            reqwest::Method::POST,
            &format!("/v1/agents/{id}/heartbeat"),
            Some(json!({"load": 0, "status": "draining"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .send(
            &key,
            reqwest::Method::DELETE,
            &format!("/v1/agents/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (_, log) = server
        .send(ADMIN_KEY, reqwest::Method::GET, "/v1/audit?limit=100", None)
        .await;
    let actions: Vec<(String, String)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["target"]
                .as_str()
                .is_some_and(|t| t.contains(&id.to_string()))
        })
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let names: Vec<&str> = actions.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        names,
        vec!["agent.register", "agent.drain", "agent.deregister"],
        "{log}"
    );
    assert!(actions[0].1.contains(&format!("tenant {a}")));
    server.stop().await;
}

async fn a_tenants_agent_may_not_reach_loopback_unless_allowed(backend: Backend) {
    // The default policy: loopback is the platform's (its local agents), not a tenant's.
    let server = TestServer::start(backend, Settings::default()).await;
    let a = tenant(&server, "a").await;
    let key = server.create_key(Role::Operator, a).await;
    let agent = ScriptedAgent::start(Behaviour::SUCCEED).unwrap();
    let body = serde_json::to_value(registration(&agent.url(), "looped", 1, 1)).unwrap();
    let (status, refused) = server
        .send(
            &key,
            reqwest::Method::POST,
            "/v1/agents",
            Some(body.clone()),
        )
        .await;
    assert_eq!(
        (
            status,
            refused["error"]["code"].as_str(),
            refused["error"]["field"].as_str()
        ),
        (422, Some("egress_denied"), Some("url")),
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("loopback"),
        "{refused}"
    );
    assert!(server.client.list_agents().await.unwrap().agents.is_empty());
    // The platform's registration of the same URL is fine.
    let (status, _) = server
        .send(ADMIN_KEY, reqwest::Method::POST, "/v1/agents", Some(body))
        .await;
    assert_eq!(status, 201);
    server.stop().await;
}

async fn a_tenants_own_agent_tells_its_submitter_what_it_answered(backend: Backend) {
    let server = TestServer::start(backend, settings()).await;
    let a = tenant(&server, "a").await;
    let key = server.create_key(Role::Operator, a).await;
    let agent = ScriptedAgent::start(Behaviour::Reject).unwrap();
    register_with(&server, &key, &registration(&agent.url(), "honest", 1, 1)).await;
    let client = server.client_with(&key);
    let submitted = client
        .submit_task(&task("honest", json!({})))
        .await
        .unwrap();
    let done = finish(&client, submitted.id).await;
    assert_eq!(done.status, TaskStatus::Failed);
    // Its own agent's answer is the tenant's business: the status and the body's text.
    let error = done.error.unwrap_or_default();
    assert!(
        error.contains("HTTP 422") && error.contains("the scripted agent rejects this task"),
        "{error}"
    );
    server.stop().await;
}
