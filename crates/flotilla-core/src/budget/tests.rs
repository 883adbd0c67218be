#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;
use proptest::prelude::*;

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn budget(limit: i64, enforcement: Enforcement) -> Budget {
    Budget {
        tenant_id: TenantId::DEFAULT,
        period: Period::Monthly,
        limit: Money::from_usd(limit),
        thresholds: vec![50, 80, 90, 100],
        enforcement,
        updated_at: at("2026-11-01T00:00:00Z"),
    }
}

#[test]
fn windows_are_calendar_aligned_in_utc() {
    let now = at("2026-12-31T23:59:59Z");
    assert_eq!(
        Period::Daily.window(now),
        (at("2026-12-31T00:00:00Z"), at("2027-01-01T00:00:00Z"))
    );
    assert_eq!(
        Period::Monthly.window(now),
        (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
    );
    assert_eq!(
        Period::Monthly.window(at("2028-02-29T12:00:00Z")),
        (at("2028-02-01T00:00:00Z"), at("2028-03-01T00:00:00Z"))
    );
}

#[test]
fn block_admits_only_what_fits_under_the_limit_counting_reservations() {
    let b = budget(10, Enforcement::Block);
    let now = at("2026-11-24T10:00:00Z");
    let spend = Spend {
        spent: Money::from_usd(6),
        reserved: Money::from_usd(3),
    };
    assert_eq!(check(&b, spend, Money::from_usd(1), now), Verdict::Allow);
    let Verdict::Block(e) = check(&b, spend, Money::from_pico(1_000_000_000_001), now) else {
        panic!("expected a block")
    };
    assert_eq!(e.resets_at, at("2026-12-01T00:00:00Z"));
    assert!(
        e.message().contains("monthly budget of $10"),
        "{}",
        e.message()
    );
    assert!(matches!(
        check(
            &budget(10, Enforcement::Downgrade),
            spend,
            Money::from_usd(2),
            now
        ),
        Verdict::Downgrade(_)
    ));
    assert_eq!(
        check(
            &budget(10, Enforcement::AlertOnly),
            spend,
            Money::from_usd(2),
            now
        ),
        Verdict::Allow
    );
}

#[test]
fn each_threshold_fires_when_first_reached() {
    let limit = Money::from_usd(100);
    let t = [50, 80, 90, 100];
    assert_eq!(
        crossed(&t, limit, Money::from_usd(10), Money::from_usd(49)),
        Vec::<u32>::new()
    );
    assert_eq!(
        crossed(&t, limit, Money::from_usd(10), Money::from_usd(50)),
        vec![50]
    );
    assert_eq!(
        crossed(&t, limit, Money::from_usd(50), Money::from_usd(95)),
        vec![80, 90]
    );
    assert_eq!(
        crossed(&t, limit, Money::from_usd(95), Money::from_usd(200)),
        vec![100]
    );
    assert_eq!(
        crossed(&t, limit, Money::from_usd(100), Money::from_usd(200)),
        Vec::<u32>::new()
    );
}

#[test]
fn requests_are_validated() {
    let now = at("2026-11-24T10:00:00Z");
    let req = |limit: i64, thresholds: Option<Vec<u32>>| BudgetRequest {
        limit: Money::from_usd(limit),
        thresholds,
        enforcement: None,
    };
    assert_eq!(
        req(0, None).into_budget(TenantId::DEFAULT, Period::Daily, &[50], now),
        Err(BudgetError::ZeroLimit)
    );
    assert_eq!(
        req(5, Some(vec![0])).into_budget(TenantId::DEFAULT, Period::Daily, &[50], now),
        Err(BudgetError::BadThreshold)
    );
    let b = req(5, Some(vec![90, 50, 90]))
        .into_budget(TenantId::DEFAULT, Period::Daily, &[50], now)
        .unwrap();
    assert_eq!(b.thresholds, vec![50, 90]);
    assert_eq!(b.enforcement, Enforcement::Block);
}

proptest! {
    /// However calls interleave, a block budget never lets committed spend (actual plus
    /// reservations) pass the limit, as long as each call's actual cost is within its ceiling.
    #[test]
    fn block_never_overshoots(calls in proptest::collection::vec((0_i64..3_000_000_000_000, 0_u32..=100, any::<bool>()), 1..200)) {
        let b = budget(10, Enforcement::Block);
        let now = at("2026-11-24T10:00:00Z");
        let mut spend = Spend::default();
        let mut in_flight: Vec<(Money, Money)> = Vec::new();
        for (ceiling, share, finish_one) in calls {
            let ceiling = Money::from_pico(ceiling);
            if check(&b, spend, ceiling, now) == Verdict::Allow {
                spend.reserved += ceiling;
                in_flight.push((ceiling, ceiling.scale(i64::from(share), 100)));
            }
            if finish_one && let Some((reserved, actual)) = in_flight.pop() {
                spend.reserved = spend.reserved - reserved;
                spend.spent += actual;
            }
            prop_assert!(spend.spent + spend.reserved <= b.limit);
        }
    }
}

#[test]
fn period_and_enforcement_names_are_pinned() {
    use strum::IntoEnumIterator;
    crate::enum_names::assert_names(
        &[(Period::Daily, "daily"), (Period::Monthly, "monthly")],
        Period::as_str,
        Period::parse,
    );
    assert_eq!(Period::ALL.to_vec(), Period::iter().collect::<Vec<_>>());
    crate::enum_names::assert_names(
        &[
            (Enforcement::Block, "block"),
            (Enforcement::Downgrade, "downgrade"),
            (Enforcement::AlertOnly, "alert_only"),
        ],
        Enforcement::as_str,
        Enforcement::parse,
    );
}
