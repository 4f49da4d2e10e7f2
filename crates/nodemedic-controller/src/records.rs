//! The NodeRemediations a pass decides over, read from the watch cache rather than listed from the
//! API server on every pass. The engine must see its own last writes (the attempt counter, the
//! active step) or it could start the same step twice, and a watch event may arrive after the next
//! pass: so what this process wrote is laid over the watch cache until the watch has caught up
//! (a resourceVersion at least as new as the write's). A write the watch never confirms (the record
//! was deleted by someone else meanwhile) is forgotten after [`OVERLAY_LIMIT`], so it cannot keep a
//! deleted record alive.

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use nodemedic_k8s::NodeRemediation;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a write stays laid over the watch without the watch confirming it. A watch delivers in
/// milliseconds; this only bounds how long a record deleted by someone else right after this
/// process wrote it can still be seen.
pub const OVERLAY_LIMIT: Duration = Duration::from_secs(60);

/// What this process last did to one record.
#[derive(Debug, Clone)]
enum Written {
    /// The object as the API server answered the write.
    Object(Arc<NodeRemediation>),
    /// Deleted; hidden until the watch sees it gone.
    Deleted,
}

/// The watch cache of NodeRemediations with this process's own writes laid over it.
#[derive(Clone)]
pub struct RecordCache {
    store: Store<NodeRemediation>,
    written: Arc<Mutex<HashMap<String, (Written, Instant)>>>,
}

/// resourceVersions are etcd revisions in practice; one that does not parse is never "newer".
fn version(r: &NodeRemediation) -> Option<u64> {
    r.resource_version().and_then(|v| v.parse().ok())
}

/// Whether the watch's copy already includes (or supersedes) what was written.
fn caught_up(watched: &NodeRemediation, written: &NodeRemediation) -> bool {
    match (version(watched), version(written)) {
        (Some(w), Some(o)) => w >= o,
        _ => watched.resource_version() == written.resource_version(),
    }
}

impl RecordCache {
    pub fn new(store: Store<NodeRemediation>) -> Self {
        RecordCache { store, written: Arc::default() }
    }

    /// Remembers the object a write returned.
    pub fn wrote(&self, mut object: NodeRemediation) {
        nodemedic_k8s::lean_record(&mut object);
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        written.insert(object.name_any(), (Written::Object(Arc::new(object)), Instant::now()));
    }

    /// Remembers that this process deleted the record.
    pub fn deleted(&self, name: &str) {
        self.written.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_string(), (Written::Deleted, Instant::now()));
    }

    /// Every record: the watch's copy, or this process's later write; what it deleted is left out.
    /// Overlay entries the watch has caught up with are dropped.
    pub fn state(&self) -> Vec<Arc<NodeRemediation>> {
        self.state_at(Instant::now())
    }

    fn state_at(&self, now: Instant) -> Vec<Arc<NodeRemediation>> {
        let mut by_name: BTreeMap<String, Arc<NodeRemediation>> = self.store.state().into_iter().map(|r| (r.name_any(), r)).collect();
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        written.retain(|name, (w, at)| match (w, by_name.get(name)) {
            _ if now.saturating_duration_since(*at) > OVERLAY_LIMIT => false,
            (Written::Object(o), Some(watched)) if caught_up(watched, o) => false,
            (Written::Object(o), _) => {
                by_name.insert(name.clone(), o.clone());
                true
            }
            (Written::Deleted, Some(_)) => {
                by_name.remove(name);
                true
            }
            (Written::Deleted, None) => false,
        });
        by_name.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;
    use nodemedic_k8s::NodeRemediationSpec;

    fn record(name: &str, version: &str, attempt: u32) -> NodeRemediation {
        let mut r = NodeRemediation::new(name, NodeRemediationSpec { node: name.into(), policy: "p".into() });
        r.metadata.resource_version = Some(version.into());
        let mut status = nodemedic_k8s::NodeRemediationStatus::default();
        status.record.attempt = attempt;
        r.status = Some(status);
        r
    }

    fn attempts(cache: &RecordCache) -> Vec<(String, u32)> {
        cache.state().iter().map(|r| (r.name_any(), r.status.as_ref().map_or(0, |s| s.record.attempt))).collect()
    }

    #[test]
    fn a_write_the_watch_has_not_delivered_yet_is_what_the_next_pass_sees() {
        let (reader, mut writer) = store();
        writer.apply_watcher_event(&Event::Apply(record("gpu-1", "10", 1)));
        let cache = RecordCache::new(reader);
        cache.wrote(record("gpu-1", "12", 2));
        assert_eq!(attempts(&cache), [("gpu-1".to_string(), 2)], "the engine must see its own attempt counter");
        // The watch catches up with a later version (the agent's report on top of our write).
        writer.apply_watcher_event(&Event::Apply(record("gpu-1", "13", 2)));
        assert_eq!(attempts(&cache), [("gpu-1".to_string(), 2)]);
        assert!(cache.written.lock().map(|w| w.is_empty()).unwrap_or(false), "the overlay is dropped once the watch caught up");
    }

    #[test]
    fn a_stale_watch_copy_never_hides_a_newer_write_and_a_deleted_record_stays_gone() {
        let (reader, mut writer) = store();
        writer.apply_watcher_event(&Event::Apply(record("gpu-1", "20", 3)));
        writer.apply_watcher_event(&Event::Apply(record("gpu-2", "21", 1)));
        let cache = RecordCache::new(reader);
        cache.wrote(record("gpu-1", "25", 4));
        cache.deleted("gpu-2");
        // An older event arrives late: the write stays on top.
        writer.apply_watcher_event(&Event::Apply(record("gpu-1", "22", 3)));
        assert_eq!(attempts(&cache), [("gpu-1".to_string(), 4)]);
        writer.apply_watcher_event(&Event::Delete(record("gpu-2", "21", 1)));
        assert_eq!(attempts(&cache), [("gpu-1".to_string(), 4)]);
        // Created again by this process: the new record shows.
        cache.wrote(record("gpu-2", "30", 1));
        assert_eq!(attempts(&cache), [("gpu-1".to_string(), 4), ("gpu-2".to_string(), 1)]);
    }

    #[test]
    fn a_write_the_watch_never_confirms_is_forgotten_so_a_record_deleted_by_someone_else_stays_deleted() {
        let (reader, _writer) = store::<NodeRemediation>();
        let cache = RecordCache::new(reader);
        cache.wrote(record("gpu-1", "40", 1));
        let written_at = Instant::now();
        assert_eq!(cache.state_at(written_at).len(), 1, "before the watch delivers, the write is what is seen");
        assert!(cache.state_at(written_at + OVERLAY_LIMIT + Duration::from_secs(1)).is_empty());
    }
}
