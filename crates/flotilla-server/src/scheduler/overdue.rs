//! Queue timeouts (docs/design.md §4): a queued task that no instance started within its pool's
//! `queue_timeout_s` (or `scheduler.queue_timeout_s`) of becoming due fails, saying so — a type
//! whose instances are all gone must not hold its tasks queued for ever. The leader sweeps.

use crate::scheduler::Scheduler;
use flotilla_core::config::Config;
use flotilla_store::Overdue;
use std::time::Duration;

/// At most this many tasks fail per sweep and group; the next sweep takes the rest.
const PER_SWEEP: u32 = 1_000;

/// One sweep: the tasks of `agent_type` (or of every type but `except`) due for longer than
/// `timeout`.
#[derive(Debug, PartialEq)]
pub(crate) struct Group {
    agent_type: Option<String>,
    except: Vec<String>,
    timeout: Duration,
    error: String,
}

/// The sweeps `config` asks for: one per pool with a queue timeout of its own, and one for every
/// other type under the default. The configuration does not change: computed once.
pub(crate) fn groups(config: &Config) -> Vec<Group> {
    let own: Vec<(&str, Option<Duration>)> = config
        .pools
        .iter()
        .filter_map(|p| p.queue_timeout.map(|t| (p.name.as_str(), t)))
        .collect();
    let mut groups: Vec<Group> = own
        .iter()
        .filter_map(|(name, timeout)| {
            timeout.map(|t| Group {
                agent_type: Some((*name).to_owned()),
                except: Vec::new(),
                timeout: t,
                error: format!(
                    "not started within {} s of being due: no instance of `{name}` took it \
                     (queue_timeout_s of pool `{name}`)",
                    t.as_secs()
                ),
            })
        })
        .collect();
    if let Some(t) = config.scheduler.queue_timeout {
        groups.push(Group {
            agent_type: None,
            except: own.iter().map(|(name, _)| (*name).to_owned()).collect(),
            timeout: t,
            error: format!(
                "not started within {} s of being due: no instance of its agent type took it \
                 (scheduler.queue_timeout_s)",
                t.as_secs()
            ),
        });
    }
    groups
}

/// Fails what is overdue now and wakes its long-polls. Errors are logged: the next sweep retries.
pub(crate) async fn sweep(state: &Scheduler, groups: &[Group]) {
    let now = state.clock.now();
    for group in groups {
        let Ok(timeout) = chrono::Duration::from_std(group.timeout) else {
            continue;
        };
        let overdue = Overdue {
            agent_type: group.agent_type.as_deref(),
            except: &group.except,
            due_before: now - timeout,
            error: &group.error,
            limit: PER_SWEEP,
        };
        match state.store.fail_overdue(&overdue, now).await {
            Ok(failed) => {
                for (task_id, agent_type) in failed {
                    tracing::warn!(%task_id, agent_type, "{}", group.error);
                    state.waiters.wake(task_id);
                }
            }
            Err(e) => {
                state.metrics.store_errors.inc();
                tracing::warn!(error = %e, "Could not fail overdue queued tasks");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        flotilla_core::config::load(Some(("test.toml", toml)), &[], &[]).expect("valid")
    }

    #[test]
    fn pools_with_their_own_timeout_are_swept_apart_from_the_default() {
        let c = config(
            "[scheduler]\nqueue_timeout_s = 60\n\
             [[pools]]\nname = \"quick\"\nprovisioner = \"static\"\nqueue_timeout_s = 5\n\
             [[pools]]\nname = \"patient\"\nprovisioner = \"static\"\nqueue_timeout_s = 0\n\
             [[pools]]\nname = \"plain\"\nprovisioner = \"static\"\n",
        );
        let g = groups(&c);
        assert_eq!(g.len(), 2, "{g:?}");
        assert_eq!(g[0].agent_type.as_deref(), Some("quick"));
        assert_eq!(g[0].timeout, Duration::from_secs(5));
        assert!(g[0].error.contains("pool `quick`"));
        assert_eq!(g[1].agent_type, None);
        assert_eq!(
            g[1].except,
            ["quick", "patient"],
            "`patient` never times out"
        );
        assert_eq!(g[1].timeout, Duration::from_secs(60));
    }

    #[test]
    fn a_default_of_zero_sweeps_only_pools_that_ask() {
        let c = config("[scheduler]\nqueue_timeout_s = 0\n");
        assert!(groups(&c).is_empty());
    }
}
