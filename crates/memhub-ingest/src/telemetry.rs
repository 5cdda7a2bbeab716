//! The pull worker's metrics (through the `metrics` facade; see
//! `memhub_engine::telemetry` for how they are served). Labels are closed sets:
//! layouts and outcomes, never system ids or keys.

pub const POLLS: &str = "memhub_ingest_polls_total";
pub const UPLOADS: &str = "memhub_ingest_uploads_total";
pub const REFUSED_OBJECTS: &str = "memhub_ingest_refused_objects";
pub const ROWS: &str = "memhub_ingest_rows_total";
pub const LAST_POLL: &str = "memhub_ingest_last_poll_timestamp_seconds";
pub const FAILING_UPLOADS: &str = "memhub_ingest_failing_uploads";

/// Register the worker's metric descriptions with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(POLLS, "Polls of the ingest bucket, by outcome (ok, list_failed)");
    metrics::describe_counter!(UPLOADS, "Uploads processed, by layout and outcome (ingested, failed)");
    metrics::describe_gauge!(REFUSED_OBJECTS, "Objects the last poll refused for a bad system or upload id");
    metrics::describe_counter!(ROWS, "Rows read from uploads, by outcome (written, unchanged, refused)");
    metrics::describe_gauge!(LAST_POLL, metrics::Unit::Seconds, "When the last poll finished (Unix time)");
    metrics::describe_gauge!(FAILING_UPLOADS, "Uploads whose last attempt failed and wait for a retry");
}

pub(crate) fn poll(listed: bool, refused: usize, failing: Option<usize>) {
    let outcome = if listed { "ok" } else { "list_failed" };
    metrics::counter!(POLLS, "outcome" => outcome).increment(1);
    if listed {
        metrics::gauge!(REFUSED_OBJECTS).set(refused as f64);
    }
    metrics::gauge!(LAST_POLL).set(memhub_types::time::now_micros() as f64 / 1e6);
    if let Some(n) = failing {
        metrics::gauge!(FAILING_UPLOADS).set(n as f64);
    }
}

pub(crate) fn upload(layout: &'static str, done: Result<&crate::worker::Ingested, ()>) {
    match done {
        Ok(d) => {
            metrics::counter!(UPLOADS, "layout" => layout, "outcome" => "ingested").increment(1);
            let unchanged = d.rows_read.saturating_sub(d.rows_written + d.rows_refused);
            for (outcome, n) in [("written", d.rows_written), ("unchanged", unchanged), ("refused", d.rows_refused)] {
                metrics::counter!(ROWS, "outcome" => outcome).increment(n);
            }
        }
        Err(()) => metrics::counter!(UPLOADS, "layout" => layout, "outcome" => "failed").increment(1),
    }
}
