//! `flotilla task submit|get|list|cancel`.

use crate::cmd::Connection;
use crate::output::{Output, print_json, table};
use anyhow::Context;
use flotilla_client::ListTasks;
use flotilla_core::id::TaskId;
use flotilla_core::task::{Task, TaskStatus};
use flotilla_core::wire::SubmitTask;
use std::time::Duration;

/// `flotilla task …`.
#[derive(clap::Subcommand, Debug)]
pub enum TaskCommand {
    /// Submit a task.
    Submit {
        /// Agent type (pool) that runs the task.
        #[arg(long = "type")]
        agent_type: String,
        /// Input as JSON text.
        #[arg(long, default_value = "{}")]
        input: String,
        /// 0 (lowest) to 9 (highest).
        #[arg(long)]
        priority: Option<i32>,
        /// Returns the existing task when this key was used before.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Deadline of each attempt, in milliseconds.
        #[arg(long)]
        timeout_ms: Option<i64>,
        /// Attempts before the task fails.
        #[arg(long)]
        max_attempts: Option<i32>,
        /// Wait up to this many seconds for the result.
        #[arg(long)]
        wait: Option<f64>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show a task with its attempts.
    Get {
        id: TaskId,
        /// Wait up to this many seconds for it to finish.
        #[arg(long)]
        wait: Option<f64>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// List tasks, newest first.
    List {
        #[arg(long)]
        status: Option<TaskStatus>,
        #[arg(long = "type")]
        agent_type: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// `next_cursor` of a previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Cancel a queued or running task.
    Cancel {
        id: TaskId,
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

fn wait_duration(seconds: Option<f64>) -> anyhow::Result<Option<Duration>> {
    seconds
        .map(|s| Duration::try_from_secs_f64(s).context("--wait must be a number of seconds ≥ 0"))
        .transpose()
}

/// Runs the command.
pub async fn run(command: TaskCommand) -> anyhow::Result<()> {
    match command {
        TaskCommand::Submit {
            agent_type,
            input,
            priority,
            idempotency_key,
            timeout_ms,
            max_attempts,
            wait,
            connection,
            output,
        } => {
            let client = connection.client()?;
            let input = serde_json::from_str(&input).context("--input must be JSON")?;
            let submission = SubmitTask {
                priority,
                idempotency_key,
                timeout_ms,
                max_attempts,
                ..SubmitTask::new(agent_type, input)
            };
            let mut task = client.submit_task(&submission).await?;
            if let Some(wait) = wait_duration(wait)? {
                task = client.get_task(task.id, Some(wait)).await?;
            }
            show_task(&task, output)
        }
        TaskCommand::Get {
            id,
            wait,
            connection,
            output,
        } => {
            let task = connection
                .client()?
                .get_task(id, wait_duration(wait)?)
                .await?;
            show_task(&task, output)
        }
        TaskCommand::List {
            status,
            agent_type,
            limit,
            cursor,
            connection,
            output,
        } => {
            let page = connection
                .client()?
                .list_tasks(&ListTasks {
                    status,
                    agent_type,
                    cursor,
                    limit: Some(limit),
                })
                .await?;
            if output == Output::Json {
                return print_json(&page);
            }
            let mut t = table(["ID", "TYPE", "STATUS", "PRIORITY", "ATTEMPT", "CREATED"]);
            for task in &page.tasks {
                t.add_row([
                    task.id.to_string(),
                    task.agent_type.clone(),
                    task.status.to_string(),
                    task.priority.to_string(),
                    task.attempt.to_string(),
                    task.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                ]);
            }
            println!("{t}");
            if let Some(cursor) = page.next_cursor {
                println!("more: --cursor {cursor}");
            }
            Ok(())
        }
        TaskCommand::Cancel {
            id,
            connection,
            output,
        } => {
            let task = connection.client()?.cancel_task(id).await?;
            show_task(&task, output)
        }
    }
}

fn show_task(task: &Task, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        return print_json(task);
    }
    let mut t = table(["FIELD", "VALUE"]);
    let mut row = |k: &str, v: String| {
        t.add_row([k.to_owned(), v]);
    };
    row("id", task.id.to_string());
    row("type", task.agent_type.clone());
    row("status", task.status.to_string());
    row("priority", task.priority.to_string());
    row(
        "attempt",
        format!("{} of {}", task.attempt, task.max_attempts),
    );
    row("created", task.created_at.to_rfc3339());
    if let Some(finished) = task.finished_at {
        row("finished", finished.to_rfc3339());
    }
    if let Some(trace) = &task.trace_id {
        row("trace id", trace.clone());
    }
    if let Some(error) = &task.error {
        row("error", error.clone());
    }
    if let Some(out) = &task.output {
        row("output", serde_json::to_string_pretty(out)?);
    }
    println!("{t}");
    if !task.attempts.is_empty() {
        let mut attempts = table(["ATTEMPT", "AGENT", "OUTCOME", "DURATION", "ERROR"]);
        for a in &task.attempts {
            attempts.add_row([
                a.number.to_string(),
                a.agent_id
                    .map(|id| id.to_string())
                    .unwrap_or_else(|| "-".to_owned()),
                a.outcome.clone(),
                format!("{} ms", (a.finished_at - a.started_at).num_milliseconds()),
                a.error.clone().unwrap_or_default(),
            ]);
        }
        println!("{attempts}");
    }
    Ok(())
}
