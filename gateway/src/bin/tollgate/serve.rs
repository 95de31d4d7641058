//! The long-running commands: `serve` (the gateway) and `sink` (the usage topic into Parquet),
//! and the signal that stops both.
//!
//! Each builds its own runtime, installs the SIGTERM and SIGINT handlers before it prints that
//! it is up, and on a signal finishes its last write (the event log's sync, the open Parquet
//! file) before it returns.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use tollgate_gateway::config::Config;
use tollgate_gateway::runtime;

/// Runs the gateway of the config at `path` until SIGTERM or SIGINT.
pub fn serve(path: &std::path::Path, options: runtime::StartOptions) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.server.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = builder
        .enable_all()
        .thread_name("tollgate")
        // Blocking work is token counting for calls without usage: a few threads suffice, and a
        // mass hang-up must not spawn hundreds.
        .max_blocking_threads(tollgate_gateway::limits::BLOCKING_THREADS_MAX)
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(async {
        let running = runtime::start(config, |var| std::env::var(var).ok(), options).await?;
        let shutdown = shutdown_signal()?;
        let listen = running.control.gateway.config.server.listen;
        let listener = tollgate_gateway::runtime::server::bind(listen)
            .with_context(|| format!("listening on {listen}"))?;
        let address = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "tollgate listening on http://{address}")?;
            out.flush()?;
        }
        running
            .serve(listener, shutdown)
            .await
            .context("writing the last usage events")
    });
    drop(runtime);
    served
}

/// Runs the usage-topic consumer of the sink config at `path` until SIGTERM or SIGINT,
/// printing its totals after every batch written.
pub fn sink(path: &std::path::Path) -> anyhow::Result<()> {
    let config = tollgate_gateway::config::SinkConfig::load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consume = config.consume.clone();
    let mut sink = tollgate_sink::consume::Sink::new(config.consume)?;
    let shutdown = runtime.block_on(async { shutdown_signal() })?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "tollgate sink: topic {} (group {}) into {}",
            consume.topic,
            consume.group_id,
            consume.data_dir.join("usage").display()
        )?;
        out.flush()?;
    }
    let signalled = Arc::clone(&stop);
    runtime.spawn(async move {
        shutdown.await;
        signalled.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    // The consumer's loop is blocking (librdkafka polls); signals arrive on the runtime.
    let totals = sink.run(&stop, |totals| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "batch written: {} events in {} files so far; {} duplicates dropped, {} redelivered skipped, {} quarantined",
            totals.written, totals.files, totals.duplicates, totals.replayed, totals.quarantined
        );
        let _ = out.flush();
    })?;
    drop(runtime);
    writeln!(
        std::io::stdout().lock(),
        "tollgate sink stopped: {} events written",
        totals.written
    )?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed here, before the listener opens:
/// a signal that arrived before the accept loop first polled a lazily made future would take
/// the default action and kill the process without its last sync.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
