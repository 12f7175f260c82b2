//! What the daemons' command lines share beside the protocol: how they log — text on stderr
//! (coloured on a terminal), or one JSON object per line (timestamp, level, target, fields) for a
//! log shipper; `RUST_LOG` filters both (default `info`) — and their man pages, generated from
//! the same CLI definitions (`--man`).

/// The daemons' `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the process's log subscriber, writing to stderr in `format`.
pub fn init(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
    match format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// If the first argument is `--man`: writes the man page of `cmd` (roff, from its clap
/// definition: every flag with its help) to stdout and returns true; the caller then exits.
/// Packages and `man -l` use it: `sluice-dataplane --man > sluice-dataplane.8`.
/// `section`: "8" for the daemons, "1" for `sluicectl`.
pub fn man_page_requested(cmd: clap::Command, section: &str) -> std::io::Result<bool> {
    if std::env::args().nth(1).as_deref() != Some("--man") {
        return Ok(false);
    }
    clap_mangen::Man::new(cmd).section(section.to_owned()).render(&mut std::io::stdout().lock())?;
    Ok(true)
}
