//! Reading the daemon's own `/metrics` back (for `load --wait`): plain
//! HTTP/1.1 GET, and the few series `load` reports on.

use crate::metrics::{HistogramSnapshot, LATENCY_BOUNDS_MS};

/// Fetches `http://127.0.0.1:<port>/metrics`.
pub async fn scrape(port: u16) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// The value of the unlabelled series `name`, if present.
pub fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The end-to-end latency histogram (`msgtransfer_e2e_latency_seconds`),
/// back in per-bucket counts.
pub fn latency(text: &str) -> HistogramSnapshot {
    let name = "msgtransfer_e2e_latency_seconds";
    let mut cumulative = Vec::with_capacity(LATENCY_BOUNDS_MS.len() + 1);
    for (i, _) in LATENCY_BOUNDS_MS.iter().enumerate() {
        let le = LATENCY_BOUNDS_MS[i] as f64 / 1000.0;
        cumulative
            .push(value(text, &format!("{name}_bucket{{le=\"{le}\"}}")).unwrap_or(0.0) as u64);
    }
    cumulative.push(value(text, &format!("{name}_bucket{{le=\"+Inf\"}}")).unwrap_or(0.0) as u64);
    let mut counts = Vec::with_capacity(cumulative.len());
    let mut prev = 0;
    for c in cumulative {
        counts.push(c.saturating_sub(prev));
        prev = prev.max(c);
    }
    HistogramSnapshot {
        counts,
        sum_ms: (value(text, &format!("{name}_sum")).unwrap_or(0.0) * 1000.0) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn the_rendered_histogram_reads_back_as_it_was() {
        let m = Metrics::default();
        for ms in [3, 40, 40, 900, 5_000_000] {
            m.e2e_latency.observe_ms(ms);
        }
        Metrics::add(&m.msgs_persisted, 5);
        let text = crate::daemon::render_metrics(&m, &Vec::new());
        assert_eq!(latency(&text), m.e2e_latency.snapshot());
        assert_eq!(value(&text, "msgtransfer_msgs_persisted_total"), Some(5.0));
    }
}
