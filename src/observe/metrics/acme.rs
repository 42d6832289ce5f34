//! The automatic certificates (`src/acme/`), read from the gateway's list when `/metrics` is
//! scraped: expiry, orders by result, and the last attempt's time and outcome.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::names;
use crate::acme::Acme;

pub struct AcmeCollector {
    pub acme: Arc<Acme>,
}

impl fmt::Debug for AcmeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeCollector").finish()
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Collector for AcmeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let managed = self.acme.list();
        let now = SystemTime::now();
        let mut family = encoder.encode_descriptor(
            names::ACME_CERTIFICATE_EXPIRY,
            names::ACME_CERTIFICATE_EXPIRY_HELP,
            None,
            MetricType::Gauge,
        )?;
        for m in &managed {
            if let Some(info) = m.info() {
                let labels = [("certificate", m.name.as_str())];
                ConstGauge::new(info.seconds_left(now)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            names::ACME_ORDERS.trim_end_matches("_total"),
            names::ACME_ORDERS_HELP,
            None,
            MetricType::Counter,
        )?;
        for m in &managed {
            let status = m.status();
            for (result, n) in [("ok", status.orders_ok), ("failed", status.orders_failed)] {
                let labels = [("certificate", m.name.as_str()), ("result", result)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            names::ACME_LAST_ATTEMPT,
            names::ACME_LAST_ATTEMPT_HELP,
            None,
            MetricType::Gauge,
        )?;
        for m in &managed {
            let at = m.status().last_attempt.map_or(0, unix);
            let labels = [("certificate", m.name.as_str())];
            ConstGauge::new(at).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            names::ACME_LAST_ATTEMPT_OK,
            names::ACME_LAST_ATTEMPT_OK_HELP,
            None,
            MetricType::Gauge,
        )?;
        for m in &managed {
            let ok = matches!(m.status().last_result, Some(Ok(())));
            let labels = [("certificate", m.name.as_str())];
            ConstGauge::new(i64::from(ok)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
