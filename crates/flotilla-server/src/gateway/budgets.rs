//! Budget enforcement on the model path (docs/design.md §7): every call reserves its price ceiling in
//! each of its tenant's budget windows before it goes upstream, and settles with the actual cost
//! afterwards; thresholds fire once per window.
//!
//! Where the counters live depends on the store. With SQLite (one control plane by design) they
//! are in memory, seeded from the ledger when a window is first touched, so the hot path takes no
//! disk write. With PostgreSQL they are rows shared by every replica, reserved and settled in
//! transactions, so several replicas cannot overshoot a budget between them.

use flotilla_core::Timestamp;
use flotilla_core::budget::{Budget, Enforcement, Exceeded, Period, Spend};
use flotilla_core::id::TenantId;
use flotilla_core::money::Money;
use flotilla_store::{BudgetWindow, DynStore, Reservation, StoreResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a tenant's budget list is reused before it is read again (changes made through this
/// replica apply at once).
const CACHE_TTL: Duration = Duration::from_secs(5);
/// A reservation not settled for this long belongs to a process that died; it stops counting.
pub(crate) const STALE_RESERVATION: chrono::Duration = chrono::Duration::minutes(15);

type WindowKey = (TenantId, Period, Timestamp);
/// A tenant's budgets and when they were read.
type Cached = (Instant, Arc<Vec<Budget>>);

/// Budgets of every tenant, and their counters.
pub struct Budgets {
    store: DynStore,
    owner: Arc<str>,
    cache: Mutex<HashMap<TenantId, Cached>>,
    /// In-memory counters (SQLite); `None`: the store's shared counters (PostgreSQL).
    local: Option<Mutex<HashMap<WindowKey, Spend>>>,
}

/// A reservation held by a call in flight.
#[derive(Debug)]
pub struct Hold {
    tenant: TenantId,
    budgets: Arc<Vec<Budget>>,
    windows: Vec<BudgetWindow>,
    pub reserved: Money,
}

/// A reservation that did not fit.
#[derive(Debug)]
pub struct Refusal {
    pub enforcement: Enforcement,
    pub exceeded: Exceeded,
}

/// A threshold that a settlement crossed, first time in its window.
#[derive(Clone, Debug)]
pub struct Crossed {
    pub budget: Budget,
    pub threshold: u32,
    pub spent: Money,
}

impl Budgets {
    pub fn new(store: DynStore, owner: Arc<str>) -> Budgets {
        let local = (!store.topology().is_shared()).then(|| Mutex::new(HashMap::new()));
        Budgets {
            store,
            owner,
            cache: Mutex::default(),
            local,
        }
    }

    /// The tenant's budgets (cached briefly).
    /// Whether `tenant` has any budget.
    pub async fn any(&self, tenant: TenantId) -> StoreResult<bool> {
        Ok(!self.of(tenant).await?.is_empty())
    }

    pub async fn of(&self, tenant: TenantId) -> StoreResult<Arc<Vec<Budget>>> {
        if let Ok(cache) = self.cache.lock()
            && let Some((at, budgets)) = cache.get(&tenant)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(budgets.clone());
        }
        let budgets = Arc::new(self.store.list_budgets(Some(tenant)).await?);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(tenant, (Instant::now(), budgets.clone()));
        }
        Ok(budgets)
    }

    /// Forgets the cached budgets of a tenant (after a change through the API).
    pub fn forget(&self, tenant: TenantId) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(&tenant);
        }
    }

    fn windows(budgets: &[Budget], now: Timestamp) -> Vec<BudgetWindow> {
        budgets
            .iter()
            .map(|b| BudgetWindow {
                period: b.period,
                start: b.period.window(now).0,
                limit: (b.enforcement != Enforcement::AlertOnly).then_some(b.limit),
            })
            .collect()
    }

    /// Reserves `ceiling` in every budget of the tenant, or says which budget cannot take it.
    /// `Ok(None)` when the tenant has no budget (nothing to hold).
    pub async fn reserve(
        &self,
        tenant: TenantId,
        ceiling: Money,
        now: Timestamp,
    ) -> StoreResult<Result<Option<Hold>, Refusal>> {
        let budgets = self.of(tenant).await?;
        if budgets.is_empty() {
            return Ok(Ok(None));
        }
        let windows = Self::windows(&budgets, now);
        let outcome = match &self.local {
            Some(local) => {
                self.seed(local, tenant, &windows, now).await?;
                reserve_local(local, tenant, &windows, ceiling)
            }
            None => {
                self.store
                    .reserve_budget(
                        tenant,
                        &windows,
                        ceiling,
                        &self.owner,
                        now,
                        now - STALE_RESERVATION,
                    )
                    .await?
            }
        };
        Ok(match outcome {
            Reservation::Granted(_) => Ok(Some(Hold {
                tenant,
                budgets,
                windows,
                reserved: ceiling,
            })),
            Reservation::Refused { index, spend } => {
                let budget = &budgets[index.min(budgets.len() - 1)];
                Err(Refusal {
                    enforcement: budget.enforcement,
                    exceeded: Exceeded {
                        period: budget.period,
                        spent: spend.spent + spend.reserved,
                        limit: budget.limit,
                        resets_at: budget.period.window(now).1,
                    },
                })
            }
        })
    }

    /// Replaces a hold's reservation by the actual cost; returns the thresholds crossed for the
    /// first time in their window.
    pub async fn settle(
        &self,
        hold: Hold,
        actual: Money,
        now: Timestamp,
    ) -> StoreResult<Vec<Crossed>> {
        let moves = match &self.local {
            Some(local) => settle_local(local, hold.tenant, &hold.windows, hold.reserved, actual),
            None => {
                self.store
                    .settle_budget(
                        hold.tenant,
                        &hold.windows,
                        hold.reserved,
                        actual,
                        &self.owner,
                        now,
                    )
                    .await?
            }
        };
        let mut crossed = Vec::new();
        for ((budget, window), (before, after)) in hold.budgets.iter().zip(&hold.windows).zip(moves)
        {
            for threshold in
                flotilla_core::budget::crossed(&budget.thresholds, budget.limit, before, after)
            {
                if self
                    .store
                    .mark_budget_threshold(hold.tenant, budget.period, window.start, threshold, now)
                    .await?
                {
                    crossed.push(Crossed {
                        budget: budget.clone(),
                        threshold,
                        spent: after,
                    });
                }
            }
        }
        Ok(crossed)
    }
    /// Every budget with its utilisation: spent over limit in its current window. Read for the
    /// `flotilla_budget_utilisation_ratio` gauge and the alert engine's `budget_utilisation`
    /// signal. `None` when the budgets cannot be listed; a budget whose spend cannot be read is left
    /// out. Both are logged and counted as store errors.
    pub async fn utilisation(
        &self,
        now: Timestamp,
        m: &crate::telemetry::metrics::Metrics,
    ) -> Option<Vec<(Budget, f64)>> {
        let budgets = match self.store.list_budgets(None).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read budgets");
                m.store_errors.inc();
                return None;
            }
        };
        let mut out = Vec::with_capacity(budgets.len());
        for budget in budgets {
            match self.spend(&budget, now).await {
                Ok(spend) => {
                    let ratio = spend.spent.ratio(budget.limit);
                    out.push((budget, ratio));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot read a budget's spend");
                    m.store_errors.inc();
                }
            }
        }
        Some(out)
    }

    /// The current spend of one budget's window.
    pub async fn spend(&self, budget: &Budget, now: Timestamp) -> StoreResult<Spend> {
        let window = Self::windows(std::slice::from_ref(budget), now).remove(0);
        match &self.local {
            Some(local) => {
                self.seed(local, budget.tenant_id, std::slice::from_ref(&window), now)
                    .await?;
                Ok(local
                    .lock()
                    .ok()
                    .and_then(|m| {
                        m.get(&(budget.tenant_id, window.period, window.start))
                            .copied()
                    })
                    .unwrap_or_default())
            }
            None => {
                self.store
                    .budget_spend(budget.tenant_id, &window, now - STALE_RESERVATION)
                    .await
            }
        }
    }

    /// Loads the spend of windows this process has not counted yet from the ledger.
    async fn seed(
        &self,
        local: &Mutex<HashMap<WindowKey, Spend>>,
        tenant: TenantId,
        windows: &[BudgetWindow],
        now: Timestamp,
    ) -> StoreResult<()> {
        for w in windows {
            let key = (tenant, w.period, w.start);
            let known = local.lock().map(|m| m.contains_key(&key)).unwrap_or(true);
            if known {
                continue;
            }
            let end = w.period.window(now).1;
            let spent = self.store.usage_spend(tenant, w.start, end).await?;
            if let Ok(mut m) = local.lock() {
                // Old windows are dropped when a new one starts.
                m.retain(|(t, p, start), _| !(*t == tenant && *p == w.period && *start < w.start));
                m.entry(key).or_insert(Spend {
                    spent,
                    reserved: Money::ZERO,
                });
            }
        }
        Ok(())
    }
}

fn reserve_local(
    local: &Mutex<HashMap<WindowKey, Spend>>,
    tenant: TenantId,
    windows: &[BudgetWindow],
    amount: Money,
) -> Reservation {
    let Ok(mut map) = local.lock() else {
        return Reservation::Granted(Vec::new());
    };
    let mut before = Vec::with_capacity(windows.len());
    for (index, w) in windows.iter().enumerate() {
        let spend = map
            .get(&(tenant, w.period, w.start))
            .copied()
            .unwrap_or_default();
        if let Some(limit) = w.limit
            && spend.spent + spend.reserved + amount > limit
        {
            return Reservation::Refused { index, spend };
        }
        before.push(spend);
    }
    for w in windows {
        map.entry((tenant, w.period, w.start)).or_default().reserved += amount;
    }
    Reservation::Granted(before)
}

fn settle_local(
    local: &Mutex<HashMap<WindowKey, Spend>>,
    tenant: TenantId,
    windows: &[BudgetWindow],
    reserved: Money,
    actual: Money,
) -> Vec<(Money, Money)> {
    let Ok(mut map) = local.lock() else {
        return Vec::new();
    };
    windows
        .iter()
        .map(|w| {
            let spend = map.entry((tenant, w.period, w.start)).or_default();
            let before = spend.spent;
            spend.reserved = spend.reserved.saturating_sub(reserved).max(Money::ZERO);
            spend.spent += actual;
            (before, spend.spent)
        })
        .collect()
}
