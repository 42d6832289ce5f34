//! Seconds to expiry of each certificate a TLS listener serves, read from the live certificate
//! store when `/metrics` is scraped, so a reloaded certificate shows at once and an alert can
//! fire days before clients start refusing it.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::names;
use crate::server::tls::CertStore;

/// Every TLS listener's store, by listener name; kept current by the gateway across reloads.
pub type CertificateList = Arc<arc_swap::ArcSwap<Vec<(String, Arc<CertStore>)>>>;

/// Every TLS listener's store, by listener name.
pub struct CertificateCollector {
    pub stores: CertificateList,
}

impl fmt::Debug for CertificateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateCollector")
            .field("listeners", &self.stores.load().len())
            .finish()
    }
}

impl Collector for CertificateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut family = encoder.encode_descriptor(
            names::TLS_CERTIFICATE_EXPIRY,
            names::TLS_CERTIFICATE_EXPIRY_HELP,
            None,
            MetricType::Gauge,
        )?;
        let now = SystemTime::now();
        for (listener, store) in self.stores.load().iter() {
            for info in store.infos() {
                // The first name says which certificate this is; the subject when it has none.
                let name = info.names.first().unwrap_or(&info.subject);
                let labels = [
                    ("listener", listener.as_str()),
                    ("certificate", name.as_str()),
                ];
                ConstGauge::new(info.seconds_left(now)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
