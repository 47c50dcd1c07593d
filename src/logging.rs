//! Logging setup: text for humans, JSON for pipelines, always to stderr.
//!
//! JSON lines carry `pod` and `namespace` at the top level when the
//! downward-API env vars `POD_NAME` and `POD_NAMESPACE` are set, and every
//! line of a drain carries its `drain_id` (through the `drain` span).

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::{LogArgs, LogFormat};

pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => {
            let inner = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_target(false);
            builder
                .json()
                .event_format(WithPod::new(inner, pod_fields()))
                .try_init()
        }
    };
}

/// `"pod":"…","namespace":"…",` from the downward API, JSON-escaped.
fn pod_fields() -> String {
    let mut out = String::new();
    for (key, var) in [("pod", "POD_NAME"), ("namespace", "POD_NAMESPACE")] {
        if let Ok(v) = std::env::var(var)
            && !v.is_empty()
        {
            out.push_str(&format!("\"{key}\":{},", serde_json::Value::String(v)));
        }
    }
    out
}

/// Puts fixed fields at the front of every JSON line.
pub(crate) struct WithPod<F> {
    inner: F,
    prefix: String,
}

impl<F> WithPod<F> {
    pub(crate) fn new(inner: F, prefix: String) -> Self {
        WithPod { inner, prefix }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithPod<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.prefix.is_empty() {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => {
                writer.write_char('{')?;
                writer.write_str(&self.prefix)?;
                writer.write_str(rest)
            }
            None => writer.write_str(&line),
        }
    }
}
