#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use nix::errno::Errno;
use std::path::Path;
use std::time::Instant;

const POOL: &str = "worker";

fn supervisor() -> (LocalSupervisor, mpsc::UnboundedReceiver<ProcessEvent>) {
    let (events, rx) = mpsc::unbounded_channel();
    let supervisor = LocalSupervisor::new(events)
        .with_backoff(Duration::from_millis(50), Duration::from_millis(200));
    (supervisor, rx)
}

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec {
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".to_owned(), script.to_owned()],
        env: Vec::new(),
        secrets: None,
        log_dir: None,
    }
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<ProcessEvent>) -> ProcessEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no event within 10 s")
        .expect("event channel closed")
}

async fn started_pid(rx: &mut mpsc::UnboundedReceiver<ProcessEvent>, want: &InstanceName) -> u32 {
    match next_event(rx).await {
        ProcessEvent::Started { name, pid, .. } if &name == want => pid,
        other => panic!("expected Started for {want}, got {other:?}"),
    }
}

async fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn alive(pid: u32) -> bool {
    match signal::kill(Pid::from_raw(i32::try_from(pid).unwrap()), None) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(e) => panic!("kill({pid}, 0): {e}"),
    }
}

#[test]
fn backoff_doubles_up_to_the_cap_and_resets_after_a_long_run() {
    let backoff = Backoff {
        base: Duration::from_millis(500),
        max: Duration::from_secs(30),
        reset_after: Duration::from_secs(60),
    };
    let quick = Duration::from_secs(1);
    let mut failures = 0;
    let mut delays = Vec::new();
    for _ in 0..9 {
        let (count, delay) = backoff.after_exit(failures, quick);
        failures = count;
        delays.push(delay.as_millis());
    }
    assert_eq!(
        delays,
        [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    );
    assert_eq!(
        backoff.after_exit(failures, Duration::from_secs(60)),
        (1, Duration::from_millis(500))
    );
    // No overflow however many failures.
    assert_eq!(
        backoff.after_exit(u32::MAX, quick).1,
        Duration::from_secs(30)
    );
}

#[tokio::test]
async fn spawn_then_list_shows_live_pids_oldest_first() {
    let (supervisor, mut rx) = supervisor();
    let first = supervisor.spawn(POOL, sh("exec sleep 1000"));
    let first_pid = started_pid(&mut rx, &first).await;
    let second = supervisor.spawn(POOL, sh("exec sleep 1000"));
    let second_pid = started_pid(&mut rx, &second).await;
    let other = supervisor.spawn("other", sh("exec sleep 1000"));
    started_pid(&mut rx, &other).await;
    assert_eq!(first.as_str(), "worker-1");
    assert_eq!(second.as_str(), "worker-2");
    assert_eq!(other.as_str(), "other-1");

    let listed = supervisor.list(Some(POOL));
    let names: Vec<_> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["worker-1", "worker-2"]);
    assert_eq!(listed[0].pid, Some(first_pid));
    assert_eq!(listed[1].pid, Some(second_pid));
    assert!(listed.iter().all(|p| p.pool == POOL && p.restarts == 0));
    assert!(alive(first_pid) && alive(second_pid));
    assert_eq!(supervisor.list(None).len(), 3);
    assert!(supervisor.list(Some("nobody")).is_empty());

    supervisor.shutdown(Duration::from_secs(5)).await;
    assert!(supervisor.list(None).is_empty());
}

#[tokio::test]
async fn the_process_gets_its_instance_name_and_our_pid() {
    let (supervisor, mut rx) = supervisor();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let mut spec = sh(
        r#"echo "$FLOTILLA_INSTANCE_NAME $FLOTILLA_PARENT_PID $EXTRA" > "$OUT.tmp"; mv "$OUT.tmp" "$OUT"; exec sleep 1000"#,
    );
    spec.env = vec![
        ("OUT".to_owned(), out.display().to_string()),
        ("EXTRA".to_owned(), "extra".to_owned()),
    ];
    let name = supervisor.spawn(POOL, spec);
    started_pid(&mut rx, &name).await;
    wait_for_file(&out).await;
    let seen = std::fs::read_to_string(&out).unwrap();
    assert_eq!(seen.trim(), format!("{name} {} extra", std::process::id()));
    supervisor.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn only_the_allowlist_and_locale_categories_are_inherited() {
    let ours = [
        ("PATH", "/usr/bin"),
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
        ("LANGUAGE", "en"),
        ("LC_ALL", "C"),
        ("LC_TIME", "C"),
        ("TZ", "UTC"),
        ("LC_", "not a category"),
        ("FLOTILLA_MASTER_KEY", "k"),
        ("FLOTILLA_BOOTSTRAP_ADMIN_KEY", "flt_x_y"),
        ("DATABASE_URL", "postgres://u:p@h/d"),
        ("RUST_LOG", "trace"),
        ("PATHEXT", "x"),
    ];
    let inherited: Vec<String> = inherited_env(
        ours.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    )
    .map(|(k, _)| k.into_string().unwrap())
    .collect();
    assert_eq!(
        inherited,
        [
            "PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_TIME", "TZ"
        ]
    );
}

#[tokio::test]
async fn the_process_gets_none_of_our_environment_beyond_the_allowlist() {
    // Cargo sets this for every test binary, so it is in our environment.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let (supervisor, mut rx) = supervisor();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let mut spec = sh(r#"env > "$OUT.tmp"; mv "$OUT.tmp" "$OUT"; exec sleep 1000"#);
    spec.env = vec![("OUT".to_owned(), out.display().to_string())];
    let name = supervisor.spawn(POOL, spec);
    started_pid(&mut rx, &name).await;
    wait_for_file(&out).await;
    let seen = std::fs::read_to_string(&out).unwrap();
    // What the shell itself sets (PWD, SHLVL, `_`) aside, only the allowlist and the spec.
    let names: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    let expected = |name: &str| {
        INHERITED_ENV.contains(&name)
            || name.starts_with("LC_")
            || [
                "OUT",
                INSTANCE_NAME_ENV,
                PARENT_PID_ENV,
                "PWD",
                "SHLVL",
                "_",
            ]
            .contains(&name)
    };
    let unexpected: Vec<&&str> = names.iter().filter(|n| !expected(n)).collect();
    assert!(unexpected.is_empty(), "inherited: {unexpected:?}\n{seen}");
    assert!(
        names.contains(&"PATH") && names.contains(&INSTANCE_NAME_ENV),
        "{seen}"
    );
    supervisor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_exiting_process_is_restarted_with_growing_backoff() {
    let (supervisor, mut rx) = supervisor();
    let name = supervisor.spawn(POOL, sh("exit 3"));
    let mut delays = Vec::new();
    for _ in 0..4 {
        started_pid(&mut rx, &name).await;
        match next_event(&mut rx).await {
            ProcessEvent::Exited {
                name: exited,
                status,
                restart_in: Some(delay),
                ..
            } if exited == name => {
                assert_eq!(status, "exit status 3");
                delays.push(delay.as_millis());
            }
            other => panic!("expected Exited with a restart, got {other:?}"),
        }
    }
    assert_eq!(delays, [50, 100, 200, 200]);
    started_pid(&mut rx, &name).await;
    let listed = supervisor.list(Some(POOL));
    assert_eq!(listed.len(), 1);
    assert!(listed[0].restarts >= 4, "{listed:?}");
    supervisor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_program_that_cannot_start_is_retried_with_backoff() {
    let (supervisor, mut rx) = supervisor();
    let name = supervisor.spawn(
        POOL,
        ProcessSpec {
            program: PathBuf::from("/nonexistent/flotilla-agent"),
            args: Vec::new(),
            env: Vec::new(),
            secrets: None,
            log_dir: None,
        },
    );
    for want in [50, 100] {
        match next_event(&mut rx).await {
            ProcessEvent::Exited {
                status, restart_in, ..
            } => {
                assert!(status.starts_with("failed to start"), "{status}");
                assert_eq!(restart_in, Some(Duration::from_millis(want)));
            }
            other => panic!("expected Exited, got {other:?}"),
        }
    }
    supervisor.stop(&name, Duration::from_secs(1)).await;
    assert!(supervisor.list(None).is_empty());
}

#[tokio::test]
async fn stop_sends_sigterm_first() {
    let (supervisor, mut rx) = supervisor();
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let term = dir.path().join("term");
    let script = format!(
        "trap 'echo term > {term}; exit 0' TERM; touch {ready}; while :; do sleep 0.05; done",
        term = term.display(),
        ready = ready.display(),
    );
    let name = supervisor.spawn(POOL, sh(&script));
    let pid = started_pid(&mut rx, &name).await;
    wait_for_file(&ready).await;

    let begun = Instant::now();
    supervisor.stop(&name, Duration::from_secs(10)).await;
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "{:?}",
        begun.elapsed()
    );
    assert_eq!(std::fs::read_to_string(&term).unwrap().trim(), "term");
    assert!(!alive(pid));
    assert!(supervisor.list(None).is_empty());
    assert_eq!(
        next_event(&mut rx).await,
        ProcessEvent::Exited {
            pool: POOL.to_owned(),
            name: name.clone(),
            status: "exit status 0".to_owned(),
            restart_in: None,
        }
    );
    assert_eq!(
        next_event(&mut rx).await,
        ProcessEvent::Stopped {
            pool: POOL.to_owned(),
            name,
        }
    );
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_grace() {
    let (supervisor, mut rx) = supervisor();
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let script = format!(
        "trap '' TERM; touch {ready}; while :; do sleep 0.05; done",
        ready = ready.display()
    );
    let name = supervisor.spawn(POOL, sh(&script));
    let pid = started_pid(&mut rx, &name).await;
    wait_for_file(&ready).await;

    let grace = Duration::from_millis(300);
    let begun = Instant::now();
    supervisor.stop(&name, grace).await;
    assert!(begun.elapsed() >= grace, "{:?}", begun.elapsed());
    assert!(!alive(pid));
    match next_event(&mut rx).await {
        ProcessEvent::Exited {
            status, restart_in, ..
        } => {
            assert_eq!(status, "signal 9 (SIGKILL)");
            assert_eq!(restart_in, None);
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut rx).await,
        ProcessEvent::Stopped { .. }
    ));
}

#[tokio::test]
async fn stop_during_backoff_cancels_the_restart() {
    let (events, mut rx) = mpsc::unbounded_channel();
    let supervisor =
        LocalSupervisor::new(events).with_backoff(Duration::from_secs(30), Duration::from_secs(30));
    let name = supervisor.spawn(POOL, sh("exit 1"));
    started_pid(&mut rx, &name).await;
    assert!(matches!(
        next_event(&mut rx).await,
        ProcessEvent::Exited {
            restart_in: Some(_),
            ..
        }
    ));
    assert_eq!(supervisor.list(None)[0].pid, None);

    let begun = Instant::now();
    supervisor.stop(&name, Duration::from_secs(10)).await;
    assert!(
        begun.elapsed() < Duration::from_secs(1),
        "{:?}",
        begun.elapsed()
    );
    assert!(matches!(
        next_event(&mut rx).await,
        ProcessEvent::Stopped { .. }
    ));
    assert!(supervisor.list(None).is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "no restart after stop");
}

#[tokio::test]
async fn after_shutdown_no_spawned_process_is_alive() {
    let (supervisor, mut rx) = supervisor();
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let stubborn = format!(
        "trap '' TERM; touch {ready}; while :; do sleep 0.05; done",
        ready = ready.display()
    );
    let mut pids = Vec::new();
    for spec in [sh("exec sleep 1000"), sh("exec sleep 1000"), sh(&stubborn)] {
        let name = supervisor.spawn(POOL, spec);
        pids.push(started_pid(&mut rx, &name).await);
    }
    // One more that is waiting to be restarted when the shutdown comes.
    let crashing = supervisor.spawn("crashing", sh("exit 2"));
    started_pid(&mut rx, &crashing).await;
    wait_for_file(&ready).await;

    let begun = Instant::now();
    supervisor.shutdown(Duration::from_millis(300)).await;
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "{:?}",
        begun.elapsed()
    );
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} outlived the shutdown");
    }
    assert!(supervisor.list(None).is_empty());

    // Every instance reported Stopped, and nothing started after the shutdown.
    let mut stopped = 0;
    while let Ok(event) = rx.try_recv() {
        match event {
            ProcessEvent::Stopped { .. } => stopped += 1,
            ProcessEvent::Started { name, .. } => assert_eq!(name, crashing),
            ProcessEvent::Exited { .. } => {}
        }
    }
    assert_eq!(stopped, 4);

    let late = supervisor.spawn(POOL, sh("exec sleep 1000"));
    assert_eq!(late.as_str(), "worker-4");
    assert_eq!(
        next_event(&mut rx).await,
        ProcessEvent::Stopped {
            pool: POOL.to_owned(),
            name: late,
        }
    );
    assert!(supervisor.list(None).is_empty());
}
