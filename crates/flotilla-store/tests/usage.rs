//! The model gateway's usage ledger and budgets on every `Store` (SQLite and PostgreSQL, like
//! behaviour.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use chrono::{Duration, NaiveDate, TimeZone, Utc};
use flotilla_core::Timestamp;
use flotilla_core::budget::{Budget, Enforcement, Period, Spend};
use flotilla_core::id::{TaskId, TenantId};
use flotilla_core::money::Money;
use flotilla_core::usage::{DailyUsage, TokenUsage, UsageRecord, UsageStatus};
use flotilla_store::{BudgetWindow, DynStore, Reservation, UsageFilter};
use support::{Backend, next_id, truncate};

behaviours!(
    inserting_usage_is_idempotent_on_the_id,
    usage_lists_filter_and_page_newest_first,
    spend_sums_the_known_costs_of_one_tenant_in_the_window,
    daily_usage_is_summed_per_utc_day_model_and_agent_type,
    budgets_are_put_replaced_listed_and_deleted,
    a_threshold_fires_once_per_window,
    reservations_are_granted_up_to_the_limit_and_a_refusal_changes_nothing,
    a_reservation_takes_every_window_or_none,
    settling_moves_the_reservation_into_the_spent_counter,
    stale_reservations_of_other_owners_are_ignored_and_pruned,
    concurrent_reservations_grant_exactly_what_the_limit_allows,
);

/// 2025-03-10 12:00:00.123456789 UTC.
fn t0() -> Timestamp {
    Utc.with_ymd_and_hms(2025, 3, 10, 12, 0, 0)
        .single()
        .unwrap()
        + Duration::nanoseconds(123_456_789)
}

fn pico(v: i64) -> Money {
    Money::from_pico(v)
}

fn record(
    tenant: TenantId,
    model: &str,
    agent_type: Option<&str>,
    cost: Option<i64>,
    at: Timestamp,
) -> UsageRecord {
    UsageRecord {
        id: next_id(),
        tenant_id: tenant,
        task_id: agent_type.map(|_| TaskId(next_id())),
        key_id: "k1".into(),
        agent_type: agent_type.map(str::to_owned),
        model: model.to_owned(),
        requested_model: Some("auto".into()),
        provider: "openai".into(),
        tokens: TokenUsage {
            input_tokens: 1000,
            cached_input_tokens: 200,
            output_tokens: 500,
            reasoning_tokens: 100,
        },
        cost: cost.map(pico),
        estimated: cost.is_none(),
        latency_ms: 1234,
        status: UsageStatus::Ok,
        created_at: at,
    }
}

fn daily_window(limit: Option<i64>) -> BudgetWindow {
    let (start, _) = Period::Daily.window(t0());
    BudgetWindow {
        period: Period::Daily,
        start,
        limit: limit.map(pico),
    }
}

fn monthly_window(limit: Option<i64>) -> BudgetWindow {
    let (start, _) = Period::Monthly.window(t0());
    BudgetWindow {
        period: Period::Monthly,
        start,
        limit: limit.map(pico),
    }
}

fn spend(spent: i64, reserved: i64) -> Spend {
    Spend {
        spent: pico(spent),
        reserved: pico(reserved),
    }
}

/// Long ago: every reservation counts.
fn never_stale() -> Timestamp {
    t0() - Duration::days(365)
}

async fn inserting_usage_is_idempotent_on_the_id(store: DynStore) {
    let tenant = TenantId(next_id());
    let first = record(tenant, "gpt-4o", Some("coder"), Some(42), t0());
    let second = record(tenant, "gpt-4o-mini", None, None, t0());
    store
        .insert_usage(std::slice::from_ref(&first))
        .await
        .unwrap();
    // A retried batch that also carries a new record: the old one is skipped, the new one kept.
    let mut changed = first.clone();
    changed.cost = Some(pico(1));
    store
        .insert_usage(&[changed, second.clone()])
        .await
        .unwrap();
    store.insert_usage(&[]).await.unwrap();

    let listed = store
        .list_usage(&UsageFilter {
            tenant_id: Some(tenant),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let expect = |r: &UsageRecord| UsageRecord {
        created_at: truncate(r.created_at),
        ..r.clone()
    };
    assert_eq!(
        listed,
        [expect(&second), expect(&first)],
        "round-trips every field, newest first"
    );
}

async fn usage_lists_filter_and_page_newest_first(store: DynStore) {
    let (acme, globex) = (TenantId(next_id()), TenantId(next_id()));
    let mut records = Vec::new();
    for i in 0..6 {
        let model = if i % 2 == 0 { "gpt-4o" } else { "claude" };
        let agent_type = if i < 3 { Some("coder") } else { None };
        records.push(record(
            acme,
            model,
            agent_type,
            Some(i),
            t0() + Duration::minutes(i),
        ));
    }
    let other = record(globex, "gpt-4o", Some("coder"), Some(7), t0());
    records.push(other.clone());
    store.insert_usage(&records).await.unwrap();

    let ids = |filter: UsageFilter| {
        let store = store.clone();
        async move {
            store
                .list_usage(&UsageFilter {
                    limit: 100,
                    ..filter
                })
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    let acme_ids: Vec<_> = records[..6].iter().rev().map(|r| r.id).collect();
    assert_eq!(
        ids(UsageFilter {
            tenant_id: Some(acme),
            ..Default::default()
        })
        .await,
        acme_ids
    );
    assert_eq!(
        ids(UsageFilter {
            tenant_id: Some(globex),
            ..Default::default()
        })
        .await,
        [other.id]
    );
    assert_eq!(ids(UsageFilter::default()).await.len(), 7, "all tenants");
    assert_eq!(
        ids(UsageFilter {
            tenant_id: Some(acme),
            model: Some("claude".into()),
            ..Default::default()
        })
        .await,
        [records[5].id, records[3].id, records[1].id]
    );
    assert_eq!(
        ids(UsageFilter {
            tenant_id: Some(acme),
            agent_type: Some("coder".into()),
            ..Default::default()
        })
        .await,
        [records[2].id, records[1].id, records[0].id]
    );
    assert_eq!(
        ids(UsageFilter {
            task_id: records[1].task_id,
            ..Default::default()
        })
        .await,
        [records[1].id]
    );
    assert_eq!(
        ids(UsageFilter {
            tenant_id: Some(acme),
            since: Some(t0() + Duration::minutes(2)),
            until: Some(t0() + Duration::minutes(4)),
            ..Default::default()
        })
        .await,
        [records[3].id, records[2].id],
        "since is inclusive, until exclusive"
    );

    // Pages of two, following the cursor.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_usage(&UsageFilter {
                tenant_id: Some(acme),
                before,
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        before = page.last().map(|r| r.id);
        seen.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(seen, acme_ids);
}

async fn spend_sums_the_known_costs_of_one_tenant_in_the_window(store: DynStore) {
    let (acme, globex) = (TenantId(next_id()), TenantId(next_id()));
    let (start, end) = Period::Daily.window(t0());
    store
        .insert_usage(&[
            record(acme, "m", None, Some(100), start),
            record(acme, "m", None, None, t0()),
            record(
                acme,
                "m",
                Some("coder"),
                Some(20),
                end - Duration::microseconds(1),
            ),
            record(acme, "m", None, Some(1_000), end),
            record(
                acme,
                "m",
                None,
                Some(1_000),
                start - Duration::microseconds(1),
            ),
            record(globex, "m", None, Some(5_000), t0()),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.usage_spend(acme, start, end).await.unwrap(),
        pico(120)
    );
    assert_eq!(
        store.usage_spend(globex, start, end).await.unwrap(),
        pico(5_000)
    );
    assert_eq!(
        store
            .usage_spend(TenantId(next_id()), start, end)
            .await
            .unwrap(),
        Money::ZERO
    );
}

async fn daily_usage_is_summed_per_utc_day_model_and_agent_type(store: DynStore) {
    let (acme, globex) = (TenantId(next_id()), TenantId(next_id()));
    let (today, _) = Period::Daily.window(t0());
    let yesterday_late = today - Duration::microseconds(1);
    let before_1970 = Utc
        .with_ymd_and_hms(1969, 12, 31, 23, 0, 0)
        .single()
        .unwrap();
    store
        .insert_usage(&[
            record(acme, "gpt-4o", Some("coder"), Some(10), today),
            record(acme, "gpt-4o", Some("coder"), None, t0()),
            record(acme, "gpt-4o", None, Some(5), t0()),
            record(acme, "claude", Some("coder"), Some(7), t0()),
            record(acme, "gpt-4o", Some("coder"), Some(3), yesterday_late),
            record(globex, "gpt-4o", Some("coder"), Some(1_000), t0()),
            record(acme, "old", None, Some(1), before_1970),
        ])
        .await
        .unwrap();
    let one = TokenUsage {
        input_tokens: 1000,
        cached_input_tokens: 200,
        output_tokens: 500,
        reasoning_tokens: 100,
    };
    let times = |n: u64| TokenUsage {
        input_tokens: one.input_tokens * n,
        cached_input_tokens: one.cached_input_tokens * n,
        output_tokens: one.output_tokens * n,
        reasoning_tokens: one.reasoning_tokens * n,
    };
    let row = |day: NaiveDate,
               model: &str,
               agent_type: Option<&str>,
               calls: u64,
               cost: i64,
               unknown: u64| DailyUsage {
        day,
        model: model.into(),
        agent_type: agent_type.map(str::to_owned),
        calls,
        tokens: times(calls),
        cost: pico(cost),
        unknown_cost_calls: unknown,
    };
    let (d9, d10) = (
        NaiveDate::from_ymd_opt(2025, 3, 9).unwrap(),
        NaiveDate::from_ymd_opt(2025, 3, 10).unwrap(),
    );
    let since = today - Duration::days(1);
    let until = today + Duration::days(1);
    assert_eq!(
        store.usage_daily(Some(acme), since, until).await.unwrap(),
        [
            row(d9, "gpt-4o", Some("coder"), 1, 3, 0),
            row(d10, "claude", Some("coder"), 1, 7, 0),
            row(d10, "gpt-4o", None, 1, 5, 0),
            row(d10, "gpt-4o", Some("coder"), 2, 10, 1),
        ]
    );
    let all = store.usage_daily(None, today, until).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|d| (d.model.as_str(), d.agent_type.as_deref(), d.calls, d.cost))
            .collect::<Vec<_>>(),
        [
            ("claude", Some("coder"), 1, pico(7)),
            ("gpt-4o", None, 1, pico(5)),
            ("gpt-4o", Some("coder"), 3, pico(1_010))
        ],
        "every tenant's calls of a group are summed together"
    );
    let old = store
        .usage_daily(
            Some(acme),
            before_1970 - Duration::days(1),
            before_1970 + Duration::days(1),
        )
        .await
        .unwrap();
    assert_eq!(
        old,
        [row(
            NaiveDate::from_ymd_opt(1969, 12, 31).unwrap(),
            "old",
            None,
            1,
            1,
            0
        )],
        "days round down before 1970 too"
    );
}

async fn budgets_are_put_replaced_listed_and_deleted(store: DynStore) {
    let (a, b) = {
        let (x, y) = (TenantId(next_id()), TenantId(next_id()));
        if x.0 < y.0 { (x, y) } else { (y, x) }
    };
    let budget = |tenant, period, limit: i64, enforcement| Budget {
        tenant_id: tenant,
        period,
        limit: pico(limit),
        thresholds: vec![50, 80, 100],
        enforcement,
        updated_at: t0(),
    };
    let monthly = budget(a, Period::Monthly, 1_000, Enforcement::Block);
    let daily = budget(a, Period::Daily, 100, Enforcement::AlertOnly);
    let other = budget(b, Period::Daily, 5, Enforcement::Downgrade);
    for b in [&monthly, &other, &daily] {
        store.put_budget(b).await.unwrap();
    }
    let stored = |b: &Budget| Budget {
        updated_at: truncate(b.updated_at),
        ..b.clone()
    };
    assert_eq!(
        store.list_budgets(Some(a)).await.unwrap(),
        [stored(&daily), stored(&monthly)],
        "daily first"
    );
    assert_eq!(
        store.list_budgets(None).await.unwrap(),
        [stored(&daily), stored(&monthly), stored(&other)],
        "by tenant, then period"
    );

    let replaced = Budget {
        limit: pico(2_000),
        thresholds: vec![90],
        enforcement: Enforcement::Downgrade,
        updated_at: t0() + Duration::hours(1),
        ..monthly.clone()
    };
    store.put_budget(&replaced).await.unwrap();
    assert_eq!(
        store.list_budgets(Some(a)).await.unwrap(),
        [stored(&daily), stored(&replaced)]
    );

    assert!(store.delete_budget(a, Period::Daily).await.unwrap());
    assert!(
        !store.delete_budget(a, Period::Daily).await.unwrap(),
        "already gone"
    );
    assert_eq!(
        store.list_budgets(Some(a)).await.unwrap(),
        [stored(&replaced)]
    );
    assert_eq!(store.list_budgets(Some(b)).await.unwrap(), [stored(&other)]);
}

async fn a_threshold_fires_once_per_window(store: DynStore) {
    let tenant = TenantId(next_id());
    let (today, tomorrow) = Period::Daily.window(t0());
    assert!(
        store
            .mark_budget_threshold(tenant, Period::Daily, today, 80, t0())
            .await
            .unwrap()
    );
    assert!(
        !store
            .mark_budget_threshold(tenant, Period::Daily, today, 80, t0())
            .await
            .unwrap()
    );
    assert!(
        store
            .mark_budget_threshold(tenant, Period::Daily, today, 100, t0())
            .await
            .unwrap(),
        "another threshold"
    );
    assert!(
        store
            .mark_budget_threshold(tenant, Period::Monthly, today, 80, t0())
            .await
            .unwrap(),
        "another period"
    );
    assert!(
        store
            .mark_budget_threshold(tenant, Period::Daily, tomorrow, 80, t0())
            .await
            .unwrap(),
        "the next window"
    );
    assert!(
        store
            .mark_budget_threshold(TenantId(next_id()), Period::Daily, today, 80, t0())
            .await
            .unwrap(),
        "another tenant"
    );
}

async fn reservations_are_granted_up_to_the_limit_and_a_refusal_changes_nothing(store: DynStore) {
    let tenant = TenantId(next_id());
    let window = daily_window(Some(100));
    let reserve = |amount: i64| {
        let store = store.clone();
        async move {
            store
                .reserve_budget(
                    tenant,
                    &[window],
                    pico(amount),
                    "replica-a",
                    t0(),
                    never_stale(),
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(reserve(60).await, Reservation::Granted(vec![spend(0, 0)]));
    assert_eq!(
        reserve(40).await,
        Reservation::Granted(vec![spend(0, 60)]),
        "exactly up to the limit"
    );
    assert_eq!(
        reserve(1).await,
        Reservation::Refused {
            index: 0,
            spend: spend(0, 100)
        }
    );
    assert_eq!(
        store
            .budget_spend(tenant, &window, never_stale())
            .await
            .unwrap(),
        spend(0, 100),
        "the refusal reserved nothing"
    );

    // Settling the first call frees what it did not spend.
    store
        .settle_budget(tenant, &[window], pico(60), pico(30), "replica-a", t0())
        .await
        .unwrap();
    assert_eq!(
        store
            .budget_spend(tenant, &window, never_stale())
            .await
            .unwrap(),
        spend(30, 40)
    );
    assert_eq!(
        reserve(31).await,
        Reservation::Refused {
            index: 0,
            spend: spend(30, 40)
        }
    );
    assert_eq!(reserve(30).await, Reservation::Granted(vec![spend(30, 40)]));

    // A window without a limit counts but never refuses; another tenant is not affected.
    let unlimited = daily_window(None);
    let other = TenantId(next_id());
    assert_eq!(
        store
            .reserve_budget(
                tenant,
                &[unlimited],
                pico(1_000),
                "replica-a",
                t0(),
                never_stale()
            )
            .await
            .unwrap(),
        Reservation::Granted(vec![spend(30, 70)])
    );
    assert_eq!(
        store
            .reserve_budget(
                other,
                &[window],
                pico(100),
                "replica-a",
                t0(),
                never_stale()
            )
            .await
            .unwrap(),
        Reservation::Granted(vec![spend(0, 0)])
    );
    assert_eq!(
        store
            .budget_spend(tenant, &window, never_stale())
            .await
            .unwrap(),
        spend(30, 1_070)
    );
    assert_eq!(
        store
            .reserve_budget(tenant, &[], pico(1), "replica-a", t0(), never_stale())
            .await
            .unwrap(),
        Reservation::Granted(vec![])
    );
}

async fn a_reservation_takes_every_window_or_none(store: DynStore) {
    let tenant = TenantId(next_id());
    // The monthly window is listed first: the refusal names the caller's index.
    let windows = [monthly_window(Some(1_000)), daily_window(Some(100))];
    let granted = store
        .reserve_budget(tenant, &windows, pico(80), "a", t0(), never_stale())
        .await
        .unwrap();
    assert_eq!(
        granted,
        Reservation::Granted(vec![spend(0, 0), spend(0, 0)])
    );
    let refused = store
        .reserve_budget(tenant, &windows, pico(30), "b", t0(), never_stale())
        .await
        .unwrap();
    assert_eq!(
        refused,
        Reservation::Refused {
            index: 1,
            spend: spend(0, 80)
        }
    );
    assert_eq!(
        store
            .budget_spend(tenant, &windows[0], never_stale())
            .await
            .unwrap(),
        spend(0, 80),
        "the monthly window, which had room, reserved nothing either"
    );

    // Once the daily window has room, both take the amount.
    store
        .settle_budget(tenant, &windows, pico(80), pico(10), "a", t0())
        .await
        .unwrap();
    let granted = store
        .reserve_budget(tenant, &windows, pico(30), "b", t0(), never_stale())
        .await
        .unwrap();
    assert_eq!(
        granted,
        Reservation::Granted(vec![spend(10, 0), spend(10, 0)])
    );
    assert_eq!(
        store
            .budget_spend(tenant, &windows[0], never_stale())
            .await
            .unwrap(),
        spend(10, 30)
    );
    assert_eq!(
        store
            .budget_spend(tenant, &windows[1], never_stale())
            .await
            .unwrap(),
        spend(10, 30)
    );

    // The monthly limit refuses when the daily one would not.
    let tight = [monthly_window(Some(50)), daily_window(Some(100))];
    assert_eq!(
        store
            .reserve_budget(tenant, &tight, pico(20), "b", t0(), never_stale())
            .await
            .unwrap(),
        Reservation::Refused {
            index: 0,
            spend: spend(10, 30)
        }
    );
}

async fn settling_moves_the_reservation_into_the_spent_counter(store: DynStore) {
    let tenant = TenantId(next_id());
    let windows = [daily_window(Some(1_000)), monthly_window(None)];
    store
        .reserve_budget(tenant, &windows, pico(100), "a", t0(), never_stale())
        .await
        .unwrap();
    store
        .reserve_budget(tenant, &windows, pico(50), "a", t0(), never_stale())
        .await
        .unwrap();
    let settled = store
        .settle_budget(tenant, &windows, pico(100), pico(70), "a", t0())
        .await
        .unwrap();
    assert_eq!(settled, [(pico(0), pico(70)), (pico(0), pico(70))]);
    assert_eq!(
        store
            .budget_spend(tenant, &windows[0], never_stale())
            .await
            .unwrap(),
        spend(70, 50)
    );

    // A call that cost more than it reserved (estimated usage): the reservation stops at zero.
    let settled = store
        .settle_budget(tenant, &windows, pico(80), pico(90), "a", t0())
        .await
        .unwrap();
    assert_eq!(settled, [(pico(70), pico(160)), (pico(70), pico(160))]);
    assert_eq!(
        store
            .budget_spend(tenant, &windows[0], never_stale())
            .await
            .unwrap(),
        spend(160, 0)
    );

    // Settling where nothing was reserved (no budget then, or a window already pruned) still
    // counts the cost, creating the counter.
    let other = TenantId(next_id());
    let settled = store
        .settle_budget(other, &windows[..1], pico(5), pico(5), "z", t0())
        .await
        .unwrap();
    assert_eq!(settled, [(pico(0), pico(5))]);
    assert_eq!(
        store
            .budget_spend(other, &windows[0], never_stale())
            .await
            .unwrap(),
        spend(5, 0)
    );
}

async fn stale_reservations_of_other_owners_are_ignored_and_pruned(store: DynStore) {
    let tenant = TenantId(next_id());
    let window = daily_window(Some(100));
    let earlier = t0() - Duration::minutes(10);
    let stale_before = t0() - Duration::minutes(5);
    // A replica that crashed with 90 reserved ten minutes ago.
    store
        .reserve_budget(
            tenant,
            &[window],
            pico(90),
            "crashed",
            earlier,
            never_stale(),
        )
        .await
        .unwrap();
    store
        .settle_budget(tenant, &[window], pico(0), pico(5), "crashed", earlier)
        .await
        .unwrap();
    assert_eq!(
        store
            .budget_spend(tenant, &window, never_stale())
            .await
            .unwrap(),
        spend(5, 90)
    );
    assert_eq!(
        store
            .budget_spend(tenant, &window, stale_before)
            .await
            .unwrap(),
        spend(5, 0)
    );

    let granted = store
        .reserve_budget(tenant, &[window], pico(90), "alive", t0(), stale_before)
        .await
        .unwrap();
    assert_eq!(
        granted,
        Reservation::Granted(vec![spend(5, 0)]),
        "the crashed replica's reservation no longer counts"
    );

    // An owner's own stale reservation is replaced, not added to.
    let revived = store
        .reserve_budget(tenant, &[window], pico(5), "crashed", t0(), stale_before)
        .await
        .unwrap();
    assert_eq!(revived, Reservation::Granted(vec![spend(5, 90)]));
    assert_eq!(
        store
            .budget_spend(tenant, &window, stale_before)
            .await
            .unwrap(),
        spend(5, 95)
    );

    // Pruning: another stale owner's row goes; the live rows and the counter stay.
    let other = daily_window(None);
    let other_tenant = TenantId(next_id());
    store
        .reserve_budget(
            other_tenant,
            &[other],
            pico(7),
            "gone",
            earlier,
            never_stale(),
        )
        .await
        .unwrap();
    let (month_start, _) = Period::Monthly.window(t0());
    assert_eq!(
        store
            .prune_budget_state(stale_before, month_start)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .budget_spend(other_tenant, &other, never_stale())
            .await
            .unwrap(),
        spend(0, 0)
    );
    assert_eq!(
        store
            .budget_spend(tenant, &window, never_stale())
            .await
            .unwrap(),
        spend(5, 95)
    );

    // Windows that started before `windows_before` go entirely: counter, reservations, thresholds.
    assert!(
        store
            .mark_budget_threshold(tenant, Period::Daily, window.start, 80, t0())
            .await
            .unwrap()
    );
    let next_day = window.start + Duration::days(1);
    // The tenant's counter, both reservations and the fired threshold, and the other tenant's
    // counter.
    assert_eq!(
        store
            .prune_budget_state(stale_before, next_day)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        store
            .budget_spend(tenant, &window, never_stale())
            .await
            .unwrap(),
        spend(0, 0)
    );
    assert!(
        store
            .mark_budget_threshold(tenant, Period::Daily, window.start, 80, t0())
            .await
            .unwrap(),
        "fired rows were pruned"
    );
    assert_eq!(
        store
            .prune_budget_state(stale_before, next_day)
            .await
            .unwrap(),
        1
    );
}

async fn concurrent_reservations_grant_exactly_what_the_limit_allows(store: DynStore) {
    const AMOUNT: i64 = 1_000_000;
    let tenant = TenantId(next_id());
    let windows = [
        daily_window(Some(10 * AMOUNT)),
        monthly_window(Some(100 * AMOUNT)),
    ];
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        calls.spawn(async move {
            let owner = format!("replica-{}", i % 4);
            store
                .reserve_budget(tenant, &windows, pico(AMOUNT), &owner, t0(), never_stale())
                .await
                .unwrap()
        });
    }
    let mut granted = 0;
    while let Some(outcome) = calls.join_next().await {
        match outcome.unwrap() {
            Reservation::Granted(spends) => {
                granted += 1;
                assert!(spends[0].reserved.pico() < 10 * AMOUNT);
            }
            Reservation::Refused { index, spend: s } => {
                assert_eq!(index, 0, "the daily limit is the one reached");
                assert_eq!(s.reserved.pico(), 10 * AMOUNT);
            }
        }
    }
    assert_eq!(granted, 10);
    for window in &windows {
        assert_eq!(
            store
                .budget_spend(tenant, window, never_stale())
                .await
                .unwrap(),
            spend(0, 10 * AMOUNT)
        );
    }
}
