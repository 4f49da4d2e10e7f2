//! Deadlines on every call to the API server. kube's client has none for reading an answer by
//! default: an API server that accepts connections and never answers would hold a call (a lease
//! renewal, a patch, a request of the actions API) forever.

use std::time::Duration;

/// The default for `--api-server-timeout`: each call's connect, write and read timeout.
pub const DEFAULT_API_SERVER_TIMEOUT: Duration = Duration::from_secs(15);

/// Watches ask the API server to end them after 290 s (kube's `watcher::Config` default) and may
/// be silent until then: their read timeout is past that, so only an API server that stopped
/// answering trips it.
pub const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(330);

/// `config` with connect, write and read timeouts of `timeout` (connect at most 10 s). The read
/// timeout counts from each request sent, not from when a pooled connection went idle.
pub fn with_timeouts(mut config: kube::Config, timeout: Duration) -> kube::Config {
    config.connect_timeout = Some(timeout.min(Duration::from_secs(10)));
    config.write_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.reset_reader_on_write = true;
    config
}

/// The same for the watches' client: the read timeout is [`WATCH_READ_TIMEOUT`] (or `timeout`, if longer).
pub fn for_watches(config: kube::Config, timeout: Duration) -> kube::Config {
    let mut config = with_timeouts(config, timeout);
    config.read_timeout = Some(timeout.max(WATCH_READ_TIMEOUT));
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_gets_a_read_timeout_and_watches_a_longer_one() -> Result<(), Box<dyn std::error::Error>> {
        let base = kube::Config::new("https://127.0.0.1:6443".parse()?);
        let calls = with_timeouts(base.clone(), Duration::from_secs(30));
        assert_eq!(
            (calls.connect_timeout, calls.read_timeout, calls.write_timeout),
            (Some(Duration::from_secs(10)), Some(Duration::from_secs(30)), Some(Duration::from_secs(30)))
        );
        assert!(calls.reset_reader_on_write);
        assert_eq!(for_watches(base, Duration::from_secs(30)).read_timeout, Some(WATCH_READ_TIMEOUT));
        Ok(())
    }
}
