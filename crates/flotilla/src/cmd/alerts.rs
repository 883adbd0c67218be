//! `flotilla alerts list` and `flotilla alerts history`.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table};

/// `flotilla alerts …`.
#[derive(clap::Subcommand, Debug)]
pub enum AlertsCommand {
    /// Pending and firing alerts with their values and since when.
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Mute an alert's actions (notifications, scale-up, emergency mode) for a while.
    Silence {
        #[command(flatten)]
        connection: Connection,
        /// The rule's name.
        #[arg(long)]
        rule: String,
        /// Only this agent type's alert (rules by agent type).
        #[arg(long = "type", value_name = "TYPE", conflicts_with_all = ["model", "tenant"])]
        agent_type: Option<String>,
        /// Only this model's alert (rules by model).
        #[arg(long, conflicts_with = "tenant")]
        model: Option<String>,
        /// Only this tenant's alert (rules by tenant), by id.
        #[arg(long)]
        tenant: Option<flotilla_core::id::TenantId>,
        /// How long, e.g. `2h`.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Active silences.
    Silences {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// End a silence.
    Unsilence {
        #[command(flatten)]
        connection: Connection,
        id: uuid::Uuid,
    },
    /// Alert transitions and failed notifications, oldest first.
    History {
        #[command(flatten)]
        connection: Connection,
        /// Only entries after this id; default: the latest.
        #[arg(long)]
        after: Option<i64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Runs the command.
pub async fn run(command: AlertsCommand) -> anyhow::Result<()> {
    match command {
        AlertsCommand::List { connection, output } => {
            let list = connection.client()?.list_alerts().await?;
            if output == Output::Json {
                return print_json(&list);
            }
            let mut t = table([
                "RULE",
                "FOR",
                "STATE",
                "SEVERITY",
                "VALUE",
                "THRESHOLD",
                "SINCE",
            ]);
            for a in &list.alerts {
                t.add_row([
                    a.rule.clone(),
                    subject(&a.agent_type, &a.model, a.tenant),
                    a.state.clone(),
                    a.severity.as_str().to_owned(),
                    format!("{} = {:.3}", a.signal.as_str(), a.value),
                    format!("{} {}", a.comparison, a.threshold),
                    a.since.format("%Y-%m-%d %H:%M:%S").to_string(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        AlertsCommand::Silence {
            connection,
            rule,
            agent_type,
            model,
            tenant,
            duration,
            comment,
        } => {
            let silence = connection
                .client()?
                .create_silence(&flotilla_core::wire::NewSilence {
                    rule,
                    agent_type,
                    model,
                    tenant,
                    duration_s: duration.as_secs().max(1),
                    comment,
                })
                .await?;
            println!("silence {} until {}", silence.id, silence.until);
            Ok(())
        }
        AlertsCommand::Silences { connection, output } => {
            let list = connection.client()?.list_silences().await?;
            if output == Output::Json {
                return print_json(&list);
            }
            let mut t = table(["ID", "RULE", "FOR", "UNTIL", "BY", "COMMENT"]);
            for s in &list.silences {
                t.add_row([
                    s.id.to_string(),
                    s.rule.clone(),
                    subject(&s.agent_type, &s.model, s.tenant),
                    s.until.format("%Y-%m-%d %H:%M:%S").to_string(),
                    s.created_by.clone(),
                    s.comment.clone(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        AlertsCommand::Unsilence { connection, id } => {
            let silence = connection.client()?.delete_silence(id).await?;
            println!("silence {} of {} ended", silence.id, silence.rule);
            Ok(())
        }
        AlertsCommand::History {
            connection,
            after,
            limit,
            output,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(after.map(|a| ("after", a.to_string())));
            let list = connection.client()?.alert_history(&query).await?;
            if output == Output::Json {
                return print_json(&list);
            }
            let mut t = table(["ID", "TIME", "ALERT"]);
            for e in &list.events {
                t.add_row([
                    e.id.to_string(),
                    e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    e.message.clone(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
    }
}

/// An alert's or silence's value: `code_generator`, `model gpt-4o`, `tenant …`, or `*` (all).
fn subject(
    agent_type: &Option<String>,
    model: &Option<String>,
    tenant: Option<flotilla_core::id::TenantId>,
) -> String {
    match (agent_type, model, tenant) {
        (Some(t), _, _) => t.clone(),
        (_, Some(m), _) => format!("model {m}"),
        (_, _, Some(t)) => format!("tenant {t}"),
        _ => "*".to_owned(),
    }
}
