//! `[scheduler.fair_share]`: how the queue is shared between tenants — a ceiling on each tenant's
//! queued tasks, and the weights by which free slots are shared among the tenants with work
//! queued ([`crate::fair_share`]).

use super::{ConfigError, invalid};
use crate::fair_share::MAX_WEIGHT;
use crate::id::TenantId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The file's form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FairShareSection {
    /// Most tasks one tenant may have queued; a submission beyond gets `429 queue_full`.
    pub max_queued_per_tenant: u64,
    /// Weight of each tenant by id (1 to 1000); tenants not named weigh 1.
    pub weights: BTreeMap<String, u32>,
}

impl Default for FairShareSection {
    fn default() -> Self {
        Self {
            max_queued_per_tenant: 100_000,
            weights: BTreeMap::new(),
        }
    }
}

/// Validated `[scheduler.fair_share]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FairShareConfig {
    pub max_queued_per_tenant: u64,
    weights: HashMap<TenantId, u32>,
}

impl Default for FairShareConfig {
    fn default() -> Self {
        Self {
            max_queued_per_tenant: FairShareSection::default().max_queued_per_tenant,
            weights: HashMap::new(),
        }
    }
}

impl FairShareConfig {
    /// The weight of `tenant`'s share of free slots.
    pub fn weight(&self, tenant: TenantId) -> u32 {
        self.weights.get(&tenant).copied().unwrap_or(1)
    }
}

pub(super) fn validate(raw: &FairShareSection) -> Result<FairShareConfig, ConfigError> {
    if !(1..=100_000_000).contains(&raw.max_queued_per_tenant) {
        return Err(invalid(
            "scheduler.fair_share.max_queued_per_tenant",
            "must be between 1 and 100000000",
        ));
    }
    let mut weights = HashMap::with_capacity(raw.weights.len());
    for (tenant, &weight) in &raw.weights {
        let key = format!("scheduler.fair_share.weights.{tenant}");
        let id: TenantId = tenant
            .parse()
            .map_err(|_| invalid(&key, "the key must be a tenant id (a UUID)"))?;
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(invalid(&key, format!("must be between 1 and {MAX_WEIGHT}")));
        }
        weights.insert(id, weight);
    }
    Ok(FairShareConfig {
        max_queued_per_tenant: raw.max_queued_per_tenant,
        weights,
    })
}
