//! Logging setup: text for humans, JSON for pipelines, always to stderr.
//!
//! A JSON line is one flat object: `timestamp`, `level`, `message`, the
//! event's fields, the fields of the spans it is in (a drain's `drain_id`
//! on every line of that drain), and `pod` and `namespace` when the
//! downward-API env vars `POD_NAME` and `POD_NAMESPACE` are set. Field values
//! are real JSON: numbers are numbers, and a field logged as JSON text (an
//! object or an array, see [`json`]) is embedded as that object or array,
//! so that `ports`, `open` and the final `report` are values a pipeline can
//! query, not strings.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::vocab::LogFormat;

/// Sets up logging to stderr in `format`, at `level` (a level or a filter
/// the flags checked).
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson { pod: pod_fields() })
            .try_init(),
    };
}

/// An error that stops the sidecar before logging is set up (bad flags),
/// in the format the operator chose: one JSON line, or a plain one. The
/// format is read from the raw arguments and the environment, since the
/// flags themselves did not parse.
pub fn early_error(args: &[std::ffi::OsString], message: &str) {
    let json = args
        .windows(2)
        .any(|w| w[0] == "--log-format" && w[1] == "json")
        || args.iter().any(|a| a == "--log-format=json")
        || std::env::var("NGINX_DRAIN_LOG_FORMAT").is_ok_and(|v| v == "json");
    if json {
        let mut line = Map::new();
        line.insert("timestamp".into(), now().into());
        line.insert("level".into(), "ERROR".into());
        line.insert("message".into(), message.trim().into());
        add_pod(&mut line);
        eprintln!("{}", Value::Object(line));
    } else {
        eprintln!("{}", message.trim_end());
    }
}

fn now() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// The downward API's pod and namespace.
fn pod_fields() -> Map<String, Value> {
    let mut m = Map::new();
    add_pod(&mut m);
    m
}

fn add_pod(m: &mut Map<String, Value>) {
    for (key, var) in [("pod", "POD_NAME"), ("namespace", "POD_NAMESPACE")] {
        if let Ok(v) = std::env::var(var)
            && !v.is_empty()
        {
            m.insert(key.into(), v.into());
        }
    }
}

/// JSON text (an object or an array) as its value; anything else as a
/// string.
fn value_of(text: String) -> Value {
    if text.starts_with(['{', '['])
        && let Ok(v) = serde_json::from_str::<Value>(&text)
    {
        return v;
    }
    Value::String(text)
}

/// Collects an event's fields as JSON values.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().into(), value_of(v.to_string()));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.0.insert(f.name().into(), value_of(format!("{v:?}")));
    }
}

/// One flat JSON object per line (see the module's doc).
struct FlatJson {
    pod: Map<String, Value>,
}

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        line.insert("timestamp".into(), now().into());
        line.insert(
            "level".into(),
            event.metadata().level().as_str().to_string().into(),
        );
        line.extend(self.pod.clone());
        // The spans' fields (JsonFields stores them as a JSON object).
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<FormattedFields<N>>()
                    && let Ok(Value::Object(m)) = serde_json::from_str::<Value>(f)
                {
                    line.extend(m);
                }
            }
        }
        event.record(&mut Fields(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}
